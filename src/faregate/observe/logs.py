"""Log output: JSON lines (the default for `faregate serve`) or text, each carrying the id of
the request it was written for.

The request id travels in a ContextVar that the OpenAI routes set for the request's task, so
any module's log call made while serving it is tagged without passing ids around. Every line
goes through a redaction of key-shaped tokens and URL passwords: secrets are kept out of log
calls in the first place, this is the second fence.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from faregate.observe.trace import RequestTrace

FORMATS = ("json", "text")
# Set by api/openai_routes.py for the task serving one request; read by the formatters.
REQUEST_TRACE: ContextVar[RequestTrace | None] = ContextVar("faregate_request_trace",
                                                            default=None)
# Fields a log call may pass with `extra=` that become JSON fields of their own.
_FIELDS = ("model", "key_alias", "status", "latency_ms", "upstream_ms", "prompt_tokens",
           "completion_tokens", "outcome", "attempts", "error")
_KEY_SHAPED = re.compile(r"\bsk-[A-Za-z0-9_\-]{4,}")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")
_BEARER = re.compile(r"(?i)(bearer\s+)\S+")


def redact(text: str) -> str:
    """Key-shaped tokens, bearer credentials and URL passwords replaced by `***`."""
    if "sk-" in text:
        text = _KEY_SHAPED.sub("sk-***", text)
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\1***@", text)
    if "earer" in text:
        text = _BEARER.sub(r"\1***", text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, request_id when known."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        trace = REQUEST_TRACE.get()
        if trace is not None:
            line["request_id"] = trace.request_id
            if trace.client_request_id is not None:
                line["client_request_id"] = trace.client_request_id
        fields = record.__dict__
        for name in _FIELDS:
            value = fields.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(line).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        trace = REQUEST_TRACE.get()
        return text if trace is None else f"{text} [request_id={trace.request_id}]"


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Send every logger's records to stderr in `log_format` (json or text)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)
