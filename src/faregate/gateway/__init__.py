"""The request path (request_path.Gateway), its retry policy, stream metering and usage."""

from faregate.gateway.replies import Reply, StreamReply
from faregate.gateway.request_path import Gateway

__all__ = ["Gateway", "Reply", "StreamReply"]
