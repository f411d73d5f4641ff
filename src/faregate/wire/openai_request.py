"""Read the few fields of an OpenAI request that the gateway needs, and check their types.

Everything else in the body is the upstream's business and passes through untouched.
The text byte count is the budget's prompt bound: a tokenizer never makes more tokens than
bytes of UTF-8 text (byte-level BPE and SentencePiece byte fallback both spend >= 1 byte per
token), so bytes are a provable upper bound that costs no tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from faregate.errors import InvalidRequest
from faregate.wire.json_limits import MAX_JSON_DEPTH, too_deep, unwritable
from faregate.wire.storable import check_text


class CallType(Enum):
    CHAT = "chat_completion"
    COMPLETION = "text_completion"
    EMBEDDING = "embedding"
    MESSAGES = "anthropic_messages"     # /v1/messages passed through to an Anthropic model


@dataclass(slots=True)
class ParsedRequest:
    call_type: CallType
    body: dict[str, Any]
    model: str
    stream: bool
    usage_requested: bool           # the client asked for stream_options.include_usage
    max_tokens_field: str | None    # which field carried the client's output limit
    max_tokens: int | None
    n: int
    text_bytes: int                 # UTF-8 bytes of every text the model reads
    messages: int
    images: int
    end_user: str | None = None     # the body's `user`: the end user it is made for


def parse(raw: bytes, call_type: CallType) -> ParsedRequest:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            raise too_deep() from None
        raise InvalidRequest(f"The request body is not valid JSON (UTF-8): {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object, e.g. "
                             '{"model": "...", "messages": [...]}')
    # Counting brackets is a cheap upper bound on the depth; check only when it could be over.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and unwritable(body):
        raise too_deep()
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string", param="model")
    check_text(model, "model")     # the one rule for text that may reach a stored row
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object", param="stream_options")
    usage_requested = bool(options and options.get("include_usage") is True)

    max_field, max_tokens = None, None
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidRequest(f"'{field}' must be an integer >= 0", param=field)
            max_field, max_tokens = field, value
            break
    n = body.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
        raise InvalidRequest("'n' must be an integer from 1 to 128", param="n")

    if call_type is CallType.CHAT:
        text_bytes, messages, images = _chat_text(body.get("messages"))
        text_bytes += _json_bytes(body.get("tools")) + _json_bytes(body.get("functions"))
        text_bytes += _json_bytes(body.get("response_format"))
    elif call_type is CallType.COMPLETION:
        text_bytes, messages, images = _prompt_text(body.get("prompt"), "prompt"), 1, 0
    else:
        text_bytes, messages, images = _prompt_text(body.get("input"), "input"), 0, 0
    return ParsedRequest(call_type, body, model, stream, usage_requested, max_field, max_tokens,
                         n, text_bytes, messages, images, end_user_id(body.get("user"), "user"))


MAX_END_USER_CHARS = 256


def end_user_id(value: object, param: str) -> str | None:
    """A caller-named end user id (the body's `user`, a header), None when none is given: a
    string of at most 256 characters that can be stored; anything else is a 400 naming
    `param`."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"'{param}' must be a string (the end user's id)", param=param)
    if len(value) > MAX_END_USER_CHARS:
        raise InvalidRequest(f"'{param}' is longer than {MAX_END_USER_CHARS} characters (an "
                             "end user's id)", param=param)
    check_text(value, param)
    return value


def _json_bytes(value: Any) -> int:
    return 0 if value is None else len(orjson.dumps(value))


def _chat_text(messages: Any) -> tuple[int, int, int]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array of messages",
                             param="messages")
    total = images = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a string 'role'",
                                 param=f"messages[{i}]")
        content = message.get("content")
        if isinstance(content, str):
            total += len(content.encode())
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    raise InvalidRequest(f"messages[{i}].content parts must be objects",
                                         param=f"messages[{i}].content")
                if isinstance(part.get("text"), str):
                    total += len(part["text"].encode())
                elif part.get("type") in ("image_url", "input_image", "image"):
                    images += 1
                else:
                    total += _json_bytes(part)
        elif content is not None:
            raise InvalidRequest(f"messages[{i}].content must be a string, an array or null",
                                 param=f"messages[{i}].content")
        for extra in ("name", "tool_calls", "function_call", "tool_call_id"):
            value = message.get(extra)
            if value is not None:
                total += len(value.encode()) if isinstance(value, str) else _json_bytes(value)
    return total, len(messages), images


def _prompt_text(prompt: Any, param: str) -> int:
    if isinstance(prompt, str):
        return len(prompt.encode())
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return sum(len(p.encode()) for p in prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return len(prompt)      # already token ids
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
            return sum(len(p) for p in prompt)
    raise InvalidRequest(f"'{param}' must be a string, an array of strings or of token ids",
                         param=param)
