"""Streams: the first event's check (retry or relay) and the meter that reads a relayed
stream's usage and counts what it produced, for its settlement."""

from __future__ import annotations

import orjson

from faregate.config import Deployment
from faregate.errors import UpstreamError

_DONE = b"data: [DONE]"


def check_first_event(d: Deployment, first: bytes | None) -> None:
    """Raise a retryable UpstreamError if a stream fails at its first event: nothing has been
    sent to the client yet, so another attempt is still possible. One small parse per stream."""
    problem = "ended the stream before its first event" if first is None else None
    if first is not None and first.startswith(b"data: {"):
        end = first.find(b"\n\n")
        try:
            event = orjson.loads(first[6:end if end >= 0 else None])
        except orjson.JSONDecodeError:
            problem = "sent a malformed first stream event"
        else:
            if isinstance(event, dict) and event.get("error") and not event.get("choices"):
                problem = f"sent an error as its first stream event: {str(event['error'])[:300]}"
    if problem is not None:
        raise UpstreamError(f"The upstream for model '{d.model_name}' {problem}", status=502,
                            code="upstream_bad_stream", retryable=True)


class StreamMeter:
    """Reads a relayed stream's usage and counts what it produced, touching JSON only when an
    event carries usage; hides the usage chunk from a client that did not ask for it."""

    __slots__ = ("_produces", "_want_usage", "broken", "done", "produced", "usage")

    def __init__(self, want_usage: bool, anthropic_events: bool = False) -> None:
        self._want_usage = want_usage
        # What marks one produced chunk: an OpenAI chunk, or (a /v1/messages pass-through)
        # Anthropic's content_block_delta; message_start, pings and the like produce nothing.
        self._produces = b"event: content_block_delta" if anthropic_events else b"data: {"
        self.usage: dict[str, int] | None = None
        self.produced = 0
        self.done = False
        self.broken = False

    def pass_on(self, block: bytes) -> bytes:
        if _DONE in block:
            self.done = True
        if b'"usage"' not in block or (b'"usage":{' not in block
                                        and b'"usage": {' not in block):
            self.produced += block.count(self._produces)
            return block
        out = []
        for event in block.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                if event:
                    self.produced += event.startswith(self._produces)
                    out.append(event)
                continue
            if b'"usage":{' in event or b'"usage": {' in event:
                chunk = orjson.loads(event[6:])
                self.usage = chunk.get("usage") or self.usage
                if not self._want_usage:
                    if not chunk.get("choices"):
                        continue            # the usage chunk the client did not ask for
                    chunk.pop("usage", None)
                    event = b"data: " + orjson.dumps(chunk)
            if b'"choices":[]' not in event and b'"choices": []' not in event:
                self.produced += 1
            out.append(event)
        return b"\n\n".join(out) + b"\n\n" if out else b""
