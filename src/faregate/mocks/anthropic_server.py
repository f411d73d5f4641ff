"""A mock of Anthropic's Messages API that checks every request against the wire format.

A raw ASGI app (`MockAnthropic`, or `faregate mock-anthropic --port N`). Routes::

    POST /v1/messages   a Message, or its stream of server-sent events
    GET  /health        {"status": "ok"}
    GET  /mock/stats    {"requests", "invalid", "models": {model: count}}
    GET  /mock/last     the last request that passed validation (its JSON body)
    POST /mock/reset    counters 0, prompt cache emptied

Validation (the published format, https://docs.anthropic.com/en/api/messages): the headers
`x-api-key` (equal to `api_key` when one is set: else 401 authentication_error) and
`anthropic-version`; only the documented top-level fields; `model`; `max_tokens` >= 1;
`messages` non-empty, user first, user and assistant alternating; content a string or non-empty
blocks of known types with their fields (text non-empty; image with a base64 or url source;
tool_use only from the assistant; tool_result only from the user, answering the previous
assistant turn's tool_use ids, each of which must be answered); `system` a string or text
blocks; `tools` with `name` and an object `input_schema`; `tool_choice` auto/any/none/tool;
`stop_sequences` strings; `temperature` and `top_p` in 0..1; `stream` a boolean;
`cache_control` {"type": "ephemeral"}. A violation is a 400 in Anthropic's shape:
`{"type": "error", "error": {"type": "invalid_request_error", "message": ...}}`.

Answers are deterministic. Input tokens = words of every text (tool inputs and schemas as
JSON) + 4 per message + 3, images 100 each. With `cache_control` on a block, everything up to
the last such block is the cached prefix: the first request with that prefix writes it
(`cache_creation_input_tokens`), later ones read it (`cache_read_input_tokens`); the mock
ignores Anthropic's minimum cacheable length. The answer: a `tool_use` of the named tool when
`tool_choice` is any/tool, or of a tool whose name the last user text mentions (after a short
text block, with `tool_choice` auto), with inputs made from its schema; otherwise
min(max_tokens, 8) words "mock" (stop_reason max_tokens when that is max_tokens, else end_turn;
a stop sequence "mock" stops at once). Models `overloaded` -> 529 overloaded_error,
`ratelimited` -> 429 rate_limit_error, `overloaded-stream` -> a stream whose first event is an
overloaded error, `overloaded-mid-stream` -> a stream that sends an overloaded error after its
first content block.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

TOP_LEVEL = {"model", "messages", "max_tokens", "system", "metadata", "stop_sequences",
             "stream", "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking",
             "service_tier", "container", "mcp_servers"}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
IMAGE_TOKENS = 100
MAX_TEXT_WORDS = 8
FAULTS = {"overloaded": (529, "overloaded_error", "Overloaded"),
          "ratelimited": (429, "rate_limit_error",
                          "This request would exceed the rate limit for your organization")}


class Invalid(Exception):
    """A request that breaks Anthropic's wire format; the message says where."""


def error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})


def _words(text: str) -> int:
    return len(text.split())


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"{where}: Input should be a valid dictionary")
    return value


def _only(block: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(block) - allowed)
    if extra:
        raise Invalid(f"{where}.{extra[0]}: Extra inputs are not permitted")


def _cache_control(block: dict[str, Any], where: str) -> None:
    cc = block.get("cache_control")
    if cc is not None and (not isinstance(cc, dict) or cc.get("type") != "ephemeral"
                           or cc.get("ttl", "5m") not in ("5m", "1h")):
        raise Invalid(f"{where}.cache_control: must be {{\"type\": \"ephemeral\"}}")


def _text_block(block: dict[str, Any], where: str) -> None:
    _only(block, {"type", "text", "cache_control", "citations"}, where)
    if not isinstance(block.get("text"), str):
        raise Invalid(f"{where}.text: Field required (a string)")
    if not block["text"]:
        raise Invalid(f"{where}: text content blocks must be non-empty")


def _image_block(block: dict[str, Any], where: str) -> None:
    _only(block, {"type", "source", "cache_control"}, where)
    source = _obj(block.get("source"), f"{where}.source")
    if source.get("type") == "base64":
        _only(source, {"type", "media_type", "data"}, f"{where}.source")
        if source.get("media_type") not in IMAGE_TYPES:
            raise Invalid(f"{where}.source.media_type: Input should be one of "
                          f"{', '.join(IMAGE_TYPES)}")
        if not isinstance(source.get("data"), str) or not source["data"]:
            raise Invalid(f"{where}.source.data: Field required")
    elif source.get("type") == "url":
        _only(source, {"type", "url"}, f"{where}.source")
        if not isinstance(source.get("url"), str) or not source["url"].startswith("http"):
            raise Invalid(f"{where}.source.url: must be an http(s) URL")
    else:
        raise Invalid(f"{where}.source.type: Input should be 'base64' or 'url'")


def _blocks(content: Any, role: str, where: str, answering: set[str]) -> list[dict[str, Any]]:
    """The message's content as blocks, checked; `answering` holds the tool_use ids the
    previous assistant turn opened (each must be answered here)."""
    if isinstance(content, str):
        if answering:
            raise Invalid(f"{where}: tool_use ids were found without tool_result blocks "
                          f"immediately after: {', '.join(sorted(answering))}")
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise Invalid(f"{where}.content: must be a string or a non-empty list of blocks")
    answered = set()
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = _obj(block, at).get("type")
        if kind == "text":
            _text_block(block, at)
        elif kind == "image" and role == "user":
            _image_block(block, at)
        elif kind == "tool_use" and role == "assistant":
            _only(block, {"type", "id", "name", "input", "cache_control"}, at)
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise Invalid(f"{at}: tool_use needs a string id and name")
            _obj(block.get("input"), f"{at}.input")
        elif kind == "tool_result" and role == "user":
            _only(block, {"type", "tool_use_id", "content", "is_error", "cache_control"}, at)
            if block.get("tool_use_id") not in answering:
                raise Invalid(f"{at}: unexpected `tool_use_id` found in `tool_result` blocks: "
                              f"{block.get('tool_use_id')}. Each `tool_result` block must have "
                              "a corresponding `tool_use` block in the previous message.")
            answered.add(block["tool_use_id"])
            inner = block.get("content")
            if inner is not None and not isinstance(inner, str):
                for k, part in enumerate(inner if isinstance(inner, list) else [None]):
                    if _obj(part, f"{at}.content.{k}").get("type") == "text":
                        _text_block(part, f"{at}.content.{k}")
                    elif part.get("type") == "image":
                        _image_block(part, f"{at}.content.{k}")
                    else:
                        raise Invalid(f"{at}.content.{k}.type: text or image")
            if "is_error" in block and not isinstance(block["is_error"], bool):
                raise Invalid(f"{at}.is_error: Input should be a valid boolean")
        else:
            raise Invalid(f"{at}.type: {kind!r} is not a valid block type for a {role} message")
        _cache_control(block, at)
    if answering - answered:
        raise Invalid(f"{where}: tool_use ids were found without tool_result blocks "
                      f"immediately after: {', '.join(sorted(answering - answered))}")
    return content


def validate(headers: dict[str, str], body: Any, api_key: str | None) -> dict[str, Any]:
    """The request, checked; raises Invalid (400) or PermissionError (401)."""
    key = headers.get("x-api-key")
    if not key or (api_key is not None and key != api_key):
        raise PermissionError("invalid x-api-key")
    if not headers.get("anthropic-version"):
        raise Invalid("anthropic-version: header is required")
    if "application/json" not in headers.get("content-type", ""):
        raise Invalid("content-type: must be application/json")
    req = _obj(body, "body")
    _only(req, TOP_LEVEL, "body")
    if not isinstance(req.get("model"), str) or not req["model"]:
        raise Invalid("model: Field required")
    max_tokens = req.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise Invalid("max_tokens: Field required (an integer >= 1)")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: Field required (a non-empty list)")
    opened: set[str] = set()
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        _only(_obj(message, where), {"role", "content"}, where)
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise Invalid(f"{where}.role: Input should be 'user' or 'assistant'")
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise Invalid(f"{where}: messages must alternate between user and assistant, "
                          "starting with user")
        blocks = _blocks(message.get("content"), role, where, opened if role == "user" else set())
        opened = {b["id"] for b in blocks if b.get("type") == "tool_use"}
    system = req.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            raise Invalid("system: Input should be a string or a list of text blocks")
        for j, block in enumerate(system):
            if _obj(block, f"system.{j}").get("type") != "text":
                raise Invalid(f"system.{j}.type: Input should be 'text'")
            _text_block(block, f"system.{j}")
            _cache_control(block, f"system.{j}")
    names = _tools(req.get("tools"))
    _tool_choice(req.get("tool_choice"), names)
    stops = req.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list)
                              or not all(isinstance(s, str) for s in stops)):
        raise Invalid("stop_sequences: Input should be a list of strings")
    for name, low, high in (("temperature", 0, 1), ("top_p", 0, 1)):
        value = req.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not low <= value <= high):
            raise Invalid(f"{name}: Input should be a number from {low} to {high}")
    top_k = req.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 0):
        raise Invalid("top_k: Input should be an integer >= 0")
    if "stream" in req and not isinstance(req["stream"], bool):
        raise Invalid("stream: Input should be a valid boolean")
    metadata = req.get("metadata")
    if metadata is not None:
        _only(_obj(metadata, "metadata"), {"user_id"}, "metadata")
    return req


def _tools(tools: Any) -> list[str]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise Invalid("tools: Input should be a valid list")
    names = []
    for j, tool in enumerate(tools):
        at = f"tools.{j}"
        _only(_obj(tool, at), {"name", "description", "input_schema", "cache_control", "type"},
              at)
        if not isinstance(tool.get("name"), str) or not TOOL_NAME.fullmatch(tool["name"]):
            raise Invalid(f"{at}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'")
        schema = _obj(tool.get("input_schema"), f"{at}.input_schema")
        if schema.get("type") != "object":
            raise Invalid(f"{at}.input_schema.type: Input should be 'object'")
        if "description" in tool and not isinstance(tool["description"], str):
            raise Invalid(f"{at}.description: Input should be a valid string")
        _cache_control(tool, at)
        if tool["name"] in names:
            raise Invalid(f"tools: Tool names must be unique ({tool['name']})")
        names.append(tool["name"])
    return names


def _tool_choice(choice: Any, names: list[str]) -> None:
    if choice is None:
        return
    kind = _obj(choice, "tool_choice").get("type")
    if kind in ("auto", "any"):
        _only(choice, {"type", "disable_parallel_tool_use"}, "tool_choice")
    elif kind == "none":
        _only(choice, {"type"}, "tool_choice")
    elif kind == "tool":
        _only(choice, {"type", "name", "disable_parallel_tool_use"}, "tool_choice")
        if choice.get("name") not in names:
            raise Invalid(f"tool_choice.name: no tool named {choice.get('name')!r} in tools")
    else:
        raise Invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    if kind != "none" and not names:
        raise Invalid("tool_choice: may only be specified while providing tools")
    if not isinstance(choice.get("disable_parallel_tool_use", False), bool):
        raise Invalid("tool_choice.disable_parallel_tool_use: Input should be a valid boolean")


def _tokens(piece: Any) -> int:
    """Words of a block's text (tool inputs, results and schemas as JSON); images 100."""
    if isinstance(piece, str):
        return _words(piece)
    if piece.get("type") == "image":
        return IMAGE_TOKENS
    if piece.get("type") == "text":
        return _words(piece["text"])
    return _words(orjson.dumps({k: v for k, v in piece.items() if k != "cache_control"})
                  .decode().replace(",", " "))


def _pieces(req: dict[str, Any]) -> list[Any]:
    """What the model reads, in Anthropic's cache order: tools, system, messages."""
    system = req.get("system")
    pieces: list[Any] = list(req.get("tools") or [])
    pieces += [system] if isinstance(system, str) else list(system or [])
    for message in req["messages"]:
        content = message["content"]
        pieces += [content] if isinstance(content, str) else content
    return pieces


def _schema_input(schema: dict[str, Any]) -> dict[str, Any]:
    samples: dict[str | None, Any] = {"string": "mock", "integer": 1, "number": 1,
                                      "boolean": True, "array": [], "object": {}}
    return {name: samples.get(prop.get("type") if isinstance(prop, dict) else None)
            for name, prop in (schema.get("properties") or {}).items()}


class MockAnthropic:
    """The ASGI app; state (counters, the prompt cache) lives on the instance."""

    def __init__(self, api_key: str | None = None) -> None:
        self._api_key = api_key
        self._ids = itertools.count(1)
        self._cached: set[str] = set()
        self.requests = 0
        self.invalid = 0
        self.models: dict[str, int] = {}
        self.last: dict[str, Any] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                done = message["type"] == "lifespan.shutdown"
                await send({"type": "lifespan.shutdown.complete" if done
                            else "lifespan.startup.complete"})
                if done:
                    return
        method, path = scope["method"], scope["path"]
        if (method, path) == ("GET", "/health"):
            return await _send_json(send, 200, b'{"status":"ok"}')
        if (method, path) == ("GET", "/mock/stats"):
            return await _send_json(send, 200, orjson.dumps(
                {"requests": self.requests, "invalid": self.invalid, "models": self.models}))
        if (method, path) == ("GET", "/mock/last"):
            return await _send_json(send, 200, orjson.dumps(self.last))
        if (method, path) == ("POST", "/mock/reset"):
            self.requests = self.invalid = 0
            self.models, self.last = {}, None
            self._cached.clear()
            return await _send_json(send, 200, b'{"status":"ok"}')
        if (method, path) != ("POST", "/v1/messages"):
            return await _send_json(send, 404, error_body("not_found_error",
                                                          f"{method} {path} not found"))
        raw = await _read_body(receive)
        self.requests += 1
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        try:
            req = validate(headers, body, self._api_key)
        except PermissionError as exc:
            self.invalid += 1
            return await _send_json(send, 401, error_body("authentication_error", str(exc)))
        except Invalid as exc:
            self.invalid += 1
            return await _send_json(send, 400, error_body("invalid_request_error", str(exc)))
        self.models[req["model"]] = self.models.get(req["model"], 0) + 1
        self.last = req
        fault = FAULTS.get(req["model"])
        if fault is not None:
            return await _send_json(send, fault[0], error_body(fault[1], fault[2]))
        message = self._message(req)
        if req.get("stream"):
            return await self._stream(send, message, req["model"])
        await _send_json(send, 200, orjson.dumps(message))

    def _usage(self, req: dict[str, Any]) -> dict[str, int]:
        pieces = _pieces(req)
        total = sum(_tokens(p) for p in pieces) + 4 * len(req["messages"]) + 3
        marks = [i for i, p in enumerate(pieces) if isinstance(p, dict) and "cache_control" in p]
        read = written = 0
        if marks:
            prefix = pieces[:marks[-1] + 1]
            tokens = sum(_tokens(p) for p in prefix)
            digest = hashlib.sha256(orjson.dumps(prefix, option=orjson.OPT_SORT_KEYS)).hexdigest()
            if digest in self._cached:
                read = tokens
            else:
                written = tokens
                self._cached.add(digest)
        return {"input_tokens": total - read - written, "output_tokens": 0,
                "cache_creation_input_tokens": written, "cache_read_input_tokens": read}

    def _message(self, req: dict[str, Any]) -> dict[str, Any]:
        usage = self._usage(req)
        content: list[dict[str, Any]] = []
        tool = self._tool_to_call(req)
        stop_sequence = None
        if tool is not None:
            if (req.get("tool_choice") or {}).get("type", "auto") == "auto":
                content.append({"type": "text", "text": f"Calling {tool['name']}."})
            content.append({"type": "tool_use", "id": f"toolu_mock_{next(self._ids)}",
                            "name": tool["name"], "input": _schema_input(tool["input_schema"])})
            stop, usage["output_tokens"] = "tool_use", 12
        elif "mock" in (req.get("stop_sequences") or []):
            stop, stop_sequence, usage["output_tokens"] = "stop_sequence", "mock", 1
        else:
            words = min(req["max_tokens"], MAX_TEXT_WORDS)
            content.append({"type": "text", "text": " ".join(["mock"] * words)})
            stop = "max_tokens" if words == req["max_tokens"] else "end_turn"
            usage["output_tokens"] = words
        return {"id": f"msg_mock_{next(self._ids)}", "type": "message", "role": "assistant",
                "model": req["model"], "content": content, "stop_reason": stop,
                "stop_sequence": stop_sequence, "usage": usage}

    @staticmethod
    def _tool_to_call(req: dict[str, Any]) -> dict[str, Any] | None:
        tools: list[dict[str, Any]] = req.get("tools") or []
        choice = req.get("tool_choice") or {"type": "auto"}
        last = req["messages"][-1]["content"]
        if not tools or choice["type"] == "none":
            return None
        if choice["type"] == "tool":
            return next(t for t in tools if t["name"] == choice["name"])
        if isinstance(last, list) and any(b.get("type") == "tool_result" for b in last):
            return None                 # a tool answered: now the model speaks
        if choice["type"] == "any":
            return tools[0]
        text = last if isinstance(last, str) else " ".join(
            b["text"] for b in last if b.get("type") == "text")
        return next((t for t in tools if t["name"] in text), None)

    async def _stream(self, send: Send, message: dict[str, Any], model: str) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"),
                                (b"cache-control", b"no-cache")]})

        async def event(kind: str, data: dict[str, Any]) -> None:
            await send({"type": "http.response.body", "more_body": True,
                        "body": b"event: " + kind.encode() + b"\ndata: "
                        + orjson.dumps({"type": kind, **data}) + b"\n\n"})

        overloaded = {"error": {"type": "overloaded_error", "message": "Overloaded"}}
        if model == "overloaded-stream":
            await event("error", overloaded)
            await send({"type": "http.response.body", "body": b""})
            return
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": {**usage, "output_tokens": 1}}
        await event("message_start", {"message": start})
        await event("ping", {})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                await event("content_block_start", {"index": index,
                                                    "content_block": {"type": "text", "text": ""}})
                words = block["text"].split(" ")
                for k, word in enumerate(words):
                    await event("content_block_delta", {"index": index, "delta": {
                        "type": "text_delta", "text": word if k == 0 else " " + word}})
            else:
                await event("content_block_start", {"index": index, "content_block": {
                    **block, "input": {}}})
                arguments = orjson.dumps(block["input"]).decode()
                half = len(arguments) // 2
                for part in (arguments[:half], arguments[half:]):
                    await event("content_block_delta", {"index": index, "delta": {
                        "type": "input_json_delta", "partial_json": part}})
            await event("content_block_stop", {"index": index})
            if model == "overloaded-mid-stream":
                await event("error", overloaded)
                await send({"type": "http.response.body", "body": b""})
                return
        await event("message_delta", {
            "delta": {"stop_reason": message["stop_reason"],
                      "stop_sequence": message["stop_sequence"]},
            "usage": {"output_tokens": usage["output_tokens"]}})
        await event("message_stop", {})
        await send({"type": "http.response.body", "body": b""})


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def serve(host: str, port: int, api_key: str | None = None) -> None:
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    uvicorn.run(MockAnthropic(api_key), host=host, port=port, log_level="warning",
                lifespan="on")
