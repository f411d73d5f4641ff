"""Anthropic's Messages API dialect, spoken at the edge for `POST /v1/messages`.

Pure translation, no I/O: an Anthropic request body becomes an OpenAI chat request that the
one request path (gateway.py) serves like any other — same admission, budget, upstream,
settlement and ledger row — and the OpenAI answer (a chat.completion, or its chunks) becomes
an Anthropic message (or its events). Errors of the gateway's tree render in Anthropic's shape.

What maps to what, and what is refused, is listed in docs/providers.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from faregate.errors import (
    GatewayError,
    InvalidRequest,
    ModelAccessDenied,
)
from faregate.wire.json_limits import MAX_JSON_DEPTH, too_deep, unwritable
from faregate.wire.openai_request import CallType, ParsedRequest, end_user_id
from faregate.wire.storable import check_text

# Fields translated to the OpenAI request; any other top-level field is refused (400), as
# Anthropic refuses unknown fields, so that nothing the client asked for is silently lost.
SUPPORTED_FIELDS = frozenset({"model", "messages", "system", "max_tokens", "stop_sequences",
                              "stream", "temperature", "top_p", "tools", "tool_choice",
                              "metadata"})
# Fields that may be sent but change nothing here (documented): hints about Anthropic's own
# serving (tier, speed, region, prompt caching, diagnostics); thinking only switched off.
TOLERATED_FIELDS = frozenset({"service_tier", "speed", "inference_geo", "cache_control",
                              "diagnostics", "thinking"})

FINISH_TO_STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                         "function_call": "tool_use", "content_filter": "refusal"}

# Anthropic's error types by HTTP status; anything else 4xx/5xx is the generic one.
_TYPE_BY_STATUS = {400: "invalid_request_error", 401: "authentication_error",
                   403: "permission_error", 404: "not_found_error",
                   413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
                   504: "timeout_error", 529: "overloaded_error"}


# The gateway's error types inside a relayed stream, as Anthropic's (else api_error).
# Keyed by object: looked up with whatever JSON value an error's "type" holds.
STREAM_ERROR_TYPES: dict[object, str] = {
    "rate_limit_error": "rate_limit_error", "timeout": "timeout_error",
    "budget_exceeded": "rate_limit_error"}


@dataclass(frozen=True, slots=True)
class TranslatedRequest:
    """An Anthropic request as the OpenAI chat body the gateway serves."""

    openai_body: bytes
    model: str
    stream: bool


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _never(model: str) -> bool:
    return False


def read_request(raw: bytes, *, counting: bool = False,
                 anthropic_only: Callable[[str], bool] = _never
                 ) -> TranslatedRequest | ParsedRequest:
    """A /v1/messages body as the gateway serves it: passed through (a ParsedRequest of call
    type MESSAGES) when `anthropic_only(model)` — every deployment that may answer is an
    Anthropic one — else translated to an OpenAI chat request.
    `counting`: a count_tokens request, which has no max_tokens."""
    body = _load(raw)
    model = body.get("model")
    if isinstance(model, str) and model and anthropic_only(model):
        return _passthrough(body, raw, counting)
    return _translate(body, counting)


def translate_request(raw: bytes, *, counting: bool = False) -> TranslatedRequest:
    """Check an Anthropic Messages request and write it as an OpenAI chat request."""
    return _translate(_load(raw), counting)


def passthrough_request(raw: bytes, *, counting: bool = False) -> ParsedRequest:
    """An Anthropic request to pass through to an Anthropic model (see `_passthrough`)."""
    return _passthrough(_load(raw), raw, counting)


def _translate(body: dict[str, Any], counting: bool) -> TranslatedRequest:
    if counting:
        body.setdefault("max_tokens", 1)
    unknown = sorted(set(body) - SUPPORTED_FIELDS - TOLERATED_FIELDS)
    if unknown:
        raise _bad(f"{', '.join(unknown)}: not supported on /v1/messages by this gateway "
                   "(see docs/providers.md); leave it out", param=unknown[0])
    thinking = body.get("thinking")
    if thinking is not None and thinking != {"type": "disabled"}:
        raise _bad("thinking: extended thinking is not supported on /v1/messages by this "
                   'gateway; leave it out or send {"type": "disabled"}', param="thinking")
    model, max_tokens, stream = _model_max_tokens_stream(body, counting)

    messages = _system(body.get("system"))
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("messages: must be a non-empty array of {role, content} objects",
                   param="messages")
    for i, message in enumerate(raw_messages):
        messages += _message(message, f"messages.{i}")

    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}     # message_delta carries the usage
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _bad(f"{name}: must be a number", param=name)
            out[name] = value
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("stop_sequences: must be an array of strings", param="stop_sequences")
        if stops:
            out["stop"] = stops
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("metadata: must be an object", param="metadata")
        user = metadata.get("user_id")
        if user is not None and not isinstance(user, str):
            raise _bad("metadata.user_id: must be a string", param="metadata.user_id")
        if user:
            out["user"] = user
    tools = body.get("tools")
    if tools is not None:
        out["tools"] = _tools(tools)
    choice = body.get("tool_choice")
    if choice is not None:
        out.update(_tool_choice(choice))
    try:
        return TranslatedRequest(orjson.dumps(out), model, stream)
    except orjson.JSONEncodeError:
        raise too_deep() from None


def _load(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"The request body is not valid JSON (UTF-8): {exc}") from None
    if not isinstance(body, dict):
        raise _bad('The request body must be a JSON object, e.g. {"model": "...", '
                   '"max_tokens": 1024, "messages": [...]}')
    return body


def _model_max_tokens_stream(body: dict[str, Any], counting: bool) -> tuple[str, int, bool]:
    """The fields both paths read first (count_tokens needs no max_tokens)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: Field required (a string naming one of the gateway's models)",
                   param="model")
    check_text(model, "model")     # the one rule for text that may reach a stored row
    max_tokens = body.get("max_tokens", 1 if counting else None)
    if max_tokens is None:
        raise _bad("max_tokens: Field required", param="max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise _bad("max_tokens: must be an integer >= 1", param="max_tokens")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream: must be a boolean", param="stream")
    return model, max_tokens, stream


def _passthrough(body: dict[str, Any], raw: bytes, counting: bool) -> ParsedRequest:
    """An Anthropic request for a model only Anthropic deployments serve, read as far as the
    gateway must and no further (Anthropic checks the rest): `model`, `max_tokens`, `stream`,
    and the prompt bound — every text, and every other block, tool and schema as its JSON
    bytes (tool inputs and results, documents, thinking), images apart."""
    # The gateway writes the body again (model, a capped max_tokens): it must be writable.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and unwritable(body):
        raise too_deep()
    model, max_tokens, stream = _model_max_tokens_stream(body, counting)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: must be a non-empty array of {role, content} objects",
                   param="messages")
    system = body.get("system")
    text_bytes = len(system.encode()) if isinstance(system, str) else _json_bytes(system)
    text_bytes += _json_bytes(body.get("tools"))
    images = 0
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            text_bytes += len(content.encode())
        elif isinstance(content, list):
            for block in content:
                if isinstance(block, dict) and block.get("type") == "image":
                    images += 1
                elif isinstance(block, dict) and isinstance(block.get("text"), str):
                    text_bytes += len(block["text"].encode())
                else:
                    text_bytes += _json_bytes(block)
        else:
            raise _bad(f"messages.{i}: must be an object with 'role' and 'content' (a string "
                       "or an array of content blocks)", param=f"messages.{i}")
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else None
    return ParsedRequest(CallType.MESSAGES, body, model, stream, True, "max_tokens", max_tokens,
                         1, text_bytes, len(messages) + (1 if system else 0), images,
                         end_user_id(user, "metadata.user_id"))


def _json_bytes(value: Any) -> int:
    return 0 if value is None else len(orjson.dumps(value))


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}] if system else []
    if isinstance(system, list):
        texts = [_text_of(block, f"system.{i}") for i, block in enumerate(system)]
        return [{"role": "system", "content": "\n".join(texts)}] if texts else []
    raise _bad("system: must be a string or an array of text blocks", param="system")


def _text_of(block: Any, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text" \
            or not isinstance(block.get("text"), str):
        raise _bad(f'{where}: must be a text block {{"type": "text", "text": "..."}}',
                   param=where)
    return str(block["text"])


def _message(message: Any, where: str) -> list[dict[str, Any]]:
    """One Anthropic message as one or more OpenAI messages (tool results become `tool`
    messages, placed first: OpenAI wants them right after the assistant's tool calls)."""
    if not isinstance(message, dict):
        raise _bad(f"{where}: must be an object with 'role' and 'content'", param=where)
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise _bad(f"{where}.role: must be 'user' or 'assistant'", param=f"{where}.role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(f"{where}.content: must be a string or an array of content blocks",
                   param=f"{where}.content")
    if role == "user":
        return _user_blocks(content, where)
    return _assistant_blocks(content, where)


def _user_blocks(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        at = f"{where}.content.{i}"
        kind = block.get("type") if isinstance(block, dict) else None
        part: dict[str, Any]
        if kind == "text":
            part = {"type": "text", "text": _text_of(block, at)}
        elif kind == "image":
            part = {"type": "image_url", "image_url": {"url": _image_url(block, at)}}
        elif kind == "tool_result":
            results.append(_tool_result(block, at))
            continue
        else:
            raise _unsupported_block(kind, at, "text, image or tool_result")
        parts.append(part)
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _assistant_blocks(blocks: list[Any], where: str) -> list[dict[str, Any]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        at = f"{where}.content.{i}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text_of(block, at))
        elif kind == "tool_use":

            tool_id, name, tool_input = block.get("id"), block.get("name"), block.get("input")
            if not isinstance(tool_id, str) or not isinstance(name, str) \
                    or not isinstance(tool_input, dict):
                raise _bad(f"{at}: a tool_use block needs a string 'id' and 'name' and an "
                           "object 'input'", param=at)
            try:
                arguments = orjson.dumps(tool_input).decode()
            except orjson.JSONEncodeError:
                raise too_deep() from None
            calls.append({"id": tool_id, "type": "function",
                          "function": {"name": name, "arguments": arguments}})
        elif kind in ("thinking", "redacted_thinking"):
            continue        # the model's own reasoning: an OpenAI chat has no place for it
        else:
            raise _unsupported_block(kind, at, "text, tool_use or thinking")
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        out["tool_calls"] = calls
    return [out]


def _unsupported_block(kind: Any, at: str, allowed: str) -> InvalidRequest:
    shown = kind if isinstance(kind, str) else "(missing)"
    return _bad(f"{at}.type: '{shown[:50]}' blocks are not supported here by this gateway; "
                f"use {allowed}", param=f"{at}.type")


def _image_url(block: dict[str, Any], at: str) -> str:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source, dict) \
            and isinstance(source.get("media_type"), str) \
            and isinstance(source.get("data"), str):
        return f"data:{source['media_type']};base64,{source['data']}"
    if kind == "url" and isinstance(source, dict) and isinstance(source.get("url"), str):
        return str(source["url"])
    raise _bad(f"{at}.source: an image source must be {{\"type\": \"base64\", \"media_type\", "
               f"\"data\"}} or {{\"type\": \"url\", \"url\"}}", param=f"{at}.source")


def _tool_result(block: dict[str, Any], at: str) -> dict[str, Any]:
    tool_id = block.get("tool_use_id")
    if not isinstance(tool_id, str):
        raise _bad(f"{at}.tool_use_id: Field required (a string)", param=f"{at}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, list):
        content = "\n".join(_text_of(part, f"{at}.content.{j}")
                            for j, part in enumerate(content))
    elif not isinstance(content, str):
        raise _bad(f"{at}.content: must be a string or an array of text blocks",
                   param=f"{at}.content")
    return {"role": "tool", "tool_call_id": tool_id, "content": content}


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools: must be an array", param="tools")
    out = []
    for i, tool in enumerate(tools):
        at = f"tools.{i}"
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            shown = str(tool.get("type"))[:50] if isinstance(tool, dict) else "(not an object)"
            raise _bad(f"{at}: only client tools ({{name, description, input_schema}}) are "
                       f"supported by this gateway, not '{shown}'", param=at)
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name or not isinstance(schema, dict):
            raise _bad(f"{at}: a tool needs a string 'name' and an object 'input_schema'",
                       param=at)
        function: dict[str, Any] = {"name": name, "parameters": schema}
        description = tool.get("description")
        if isinstance(description, str):
            function["description"] = description
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        out: dict[str, Any] = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        return {"tool_choice": "none"}
    elif kind == "tool" and isinstance(choice, dict) and isinstance(choice.get("name"), str):
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise _bad("tool_choice: must be {\"type\": \"auto\"|\"any\"|\"none\"} or "
                   "{\"type\": \"tool\", \"name\": \"...\"}", param="tool_choice")
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False
    return out


def translate_reply(openai_body: bytes, model: str, message_id: str) -> bytes:
    """An OpenAI chat.completion as an Anthropic message (first choice; `n` is always 1)."""
    reply = _object(orjson.loads(openai_body))
    choices = reply.get("choices")
    choice = _object(choices[0] if isinstance(choices, list) and choices else None)
    message = _object(choice.get("message"))
    content: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        if not isinstance(call, dict):
            continue
        function = _object(call.get("function"))
        content.append({"type": "tool_use", "id": call.get("id") or "",
                        "name": function.get("name") or "",
                        "input": _arguments(function.get("arguments"))})
    return orjson.dumps({
        "id": message_id, "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop_reason(choice.get("finish_reason")),
        "stop_sequence": None, "usage": anthropic_usage(reply.get("usage"))})


def anthropic_usage(usage: Any) -> dict[str, int]:
    """OpenAI usage as Anthropic's, whose input_tokens leave out the prompt-cache reads and
    writes (counted apart): from an Anthropic upstream's counts if the usage carries them,
    else from OpenAI's prompt_tokens_details.cached_tokens."""
    usage = usage if isinstance(usage, dict) else {}
    read = usage.get("cache_read_input_tokens")
    if read is None:
        details = usage.get("prompt_tokens_details")
        read = details.get("cached_tokens") if isinstance(details, dict) else None
    read, written = _count(read), _count(usage.get("cache_creation_input_tokens"))
    return {"input_tokens": max(_count(usage.get("prompt_tokens")) - read - written, 0),
            "output_tokens": _count(usage.get("completion_tokens")),
            "cache_creation_input_tokens": written, "cache_read_input_tokens": read}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _object(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: an odd upstream answer gives an
    empty message, never a crash after the request was charged."""
    return value if isinstance(value, dict) else {}


def stop_reason(finish_reason: Any) -> str:
    """OpenAI's finish_reason as Anthropic's stop_reason. A stop sequence is reported as
    end_turn: OpenAI does not say whether one matched."""
    return FINISH_TO_STOP_REASON.get(finish_reason, "end_turn") \
        if isinstance(finish_reason, str) else "end_turn"


def _arguments(arguments: Any) -> dict[str, Any]:
    """A tool call's JSON arguments as the object Anthropic's `input` must be; arguments
    that are not a JSON object are kept as a string under `_raw_arguments`."""
    try:
        parsed = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"_raw_arguments": str(arguments)}


def error_status(exc: GatewayError) -> int:
    """The HTTP status Anthropic would use; the gateway's own differs in two places: a key
    that may not use a model is 403 (not 401), an unknown model is 404 (not 400)."""
    if isinstance(exc, ModelAccessDenied):
        return 403
    if isinstance(exc, InvalidRequest) and exc.code == "model_not_found":
        return 404
    return exc.status


def error_type(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def error_body(exc: GatewayError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(status, body, headers) of `exc` in Anthropic's error shape. An exhausted budget is a
    429 rate_limit_error whose own `x-should-retry: false` (errors.BudgetExceeded) tells
    Anthropic's SDKs not to retry it."""
    status = error_status(exc)
    body = orjson.dumps({"type": "error",
                         "error": {"type": error_type(status), "message": exc.message}})
    return status, body, [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]


def sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamTranslator:
    """OpenAI chat.completion.chunk events in, Anthropic message stream events out.

    One content block is open at a time: text deltas go to a text block, each tool call (by
    its OpenAI index) to a tool_use block with input_json_delta fragments. `data: [DONE]`
    closes the open block and ends the message with message_delta (stop_reason, usage) and
    message_stop; an error event becomes Anthropic's `error` event.
    """

    def __init__(self, model: str, message_id: str) -> None:
        self._model = model
        self._id = message_id
        self._index = -1                    # the open content block's index, -1: none
        self._open: tuple[str, int] | None = None   # ("text", 0) or ("tool", openai index)
        self._stop_reason = "end_turn"
        self._usage: dict[str, Any] = {}
        self.ended = False

    def start(self) -> bytes:
        return sse("message_start", {"type": "message_start", "message": {
            "id": self._id, "type": "message", "role": "assistant", "model": self._model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0}}})

    def feed(self, block: bytes) -> bytes:
        """Translate one block of complete SSE events."""
        out = []
        for event in block.split(b"\n\n"):
            if not event.startswith(b"data: "):
                continue
            data = event[6:].strip()
            if data == b"[DONE]":
                out.append(self._end())
                continue
            chunk = orjson.loads(data)
            if not isinstance(chunk, dict):
                continue
            if chunk.get("error") is not None:
                out.append(self._error(chunk["error"]))
                continue
            if chunk.get("usage"):
                self._usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                out.append(self._choice(choice))
        return b"".join(out)

    def _choice(self, choice: dict[str, Any]) -> bytes:
        out = []
        delta = choice.get("delta") or {}
        if delta.get("content"):
            if self._open != ("text", 0):
                out.append(self._open_block({"type": "text", "text": ""}, ("text", 0)))
            out.append(self._delta({"type": "text_delta", "text": delta["content"]}))
        for call in delta.get("tool_calls") or []:
            key = ("tool", call.get("index", 0))
            function = call.get("function") or {}
            if self._open != key:
                out.append(self._open_block({"type": "tool_use", "id": call.get("id") or "",
                                             "name": function.get("name") or "",
                                             "input": {}}, key))
            if function.get("arguments"):
                out.append(self._delta({"type": "input_json_delta",
                                        "partial_json": function["arguments"]}))
        if choice.get("finish_reason"):
            self._stop_reason = stop_reason(choice["finish_reason"])
        return b"".join(out)

    def _open_block(self, content_block: dict[str, Any], key: tuple[str, int]) -> bytes:
        closed = self._close_block()
        self._index += 1
        self._open = key
        return closed + sse("content_block_start", {
            "type": "content_block_start", "index": self._index, "content_block": content_block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                           "delta": delta})

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return sse("content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _end(self) -> bytes:
        if self.ended:
            return b""
        self.ended = True
        usage = anthropic_usage(self._usage)
        return self._close_block() + sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason, "stop_sequence": None},
            "usage": usage}) + sse("message_stop", {"type": "message_stop"})

    def _error(self, error: Any) -> bytes:
        self.ended = True
        message = error.get("message") if isinstance(error, dict) else str(error)
        kind = error.get("type") if isinstance(error, dict) else None
        anthropic_type = STREAM_ERROR_TYPES.get(kind, "api_error")
        return sse("error", {"type": "error",
                             "error": {"type": anthropic_type, "message": str(message)}})
