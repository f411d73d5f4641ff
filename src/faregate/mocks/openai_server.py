"""Mock OpenAI-compatible upstream used for demos, tests and benchmarks.

A raw ASGI app (no framework, orjson, precomputed constant bytes) so that it is
never the bottleneck when it is the baseline of a benchmark.

Routes (each also served without the ``/v1`` prefix)::

    POST /v1/chat/completions   chat.completion / chat.completion.chunk (SSE)
    POST /v1/completions        text_completion (optionally SSE)
    POST /v1/embeddings         8-dim deterministic vectors (float or base64)
    GET  /v1/models             one model, ``mock-model``
    GET  /health                {"status": "ok"} (never needs the API key)

Anything else is a 404; a bad body is a 400; both in OpenAI's error shape.

Deterministic usage rule:

* ``words(text) = len(text.split())`` (whitespace-separated words).
* chat ``prompt_tokens = sum(words(content) + 4 for each message) + 3``; a
  content that is a list of parts counts the ``text`` of each part (non-text
  parts count 0), a null or missing content counts 0.  The +4 per message and
  +3 simulate a chat template, as real servers add (``template_tokens`` sets the
  +3: a realistic template adds a few dozen).
* completions ``prompt_tokens = words(prompt)``, summed over a list of strings.
* embeddings ``prompt_tokens = sum(words(s))`` over the inputs; token-id inputs
  (a list of ints, or a list of lists of ints) count one token per int.
* ``completion_tokens = n`` = ``max_completion_tokens`` if given, else
  ``max_tokens`` if given, else 16 (a non-negative int, at most 1,000,000;
  anything else is a 400).  The completion text is ``n`` words, ``"mock mock
  ..."``; streamed, each token chunk carries one word (with a leading space
  except the first), so the concatenated deltas equal the non-streamed text.
* ``finish_reason`` is ``"length"`` if a max was given, else ``"stop"``.
* ``total_tokens = prompt_tokens + completion_tokens``.
* A chat request whose ``tool_choice`` forces a tool (``"required"``: the first
  of ``tools``; ``{"type": "function", "function": {"name": ...}}``: that one)
  gets one tool call instead of text, ``id`` ``call_mock_1``, its arguments a
  JSON object with ``"mock"`` for every string property of the tool's
  ``parameters`` (streamed in two fragments), ``finish_reason`` ``"tool_calls"``.

Streaming follows OpenAI: chat sends a role chunk, one chunk per token, a chunk
with an empty delta and the finish_reason, then, only with
``stream_options.include_usage``, a ``"choices": []`` chunk with the usage
(the other chunks then carry ``"usage": null``), then ``data: [DONE]``.
Legacy completions stream the same way without the role chunk.

Hooks: ``latency_ms`` sleeps before answering a generation or embedding request
(for streams, before the first chunk).  A request header ``x-mock-status: <code>``
(400-599) on any route answers that status with an OpenAI error, message
``mock fault <code>``, type ``server_error`` (5xx), ``rate_limit_error`` (429) or
``invalid_request_error``; so does a request whose ``model`` is ``fault-<code>``
(a gateway deployment can point at it).  A streamed request whose ``model`` is
``slow-<ms>`` gets one event per write, ``<ms>`` apart, like a model decoding.
A model whose name starts with ``completions-only`` is a base model, as OpenAI's
davinci-002: /v1/completions answers it, /v1/chat/completions is a 404 saying it is
not a chat model (a text-completion-openai/ deployment points at one).
More fault models: ``hang`` never answers (for timeouts); ``malformed`` answers
200 with a body that is not JSON; ``break-<n>`` streams n events, then drops the
connection (a non-streamed request is dropped after the response head).
With ``api_key`` set, every route but /health and /mock/* requires
``Authorization: Bearer <api_key>`` (checked before the fault hook).

Run-time faults for every model (``POST /mock/faults``, e.g. ``{"mode": "error",
"status": 503, "rate": 0.5}``) and counters (``GET /mock/stats``: requests,
streams started, completed, cancelled by the client, broken, active) are
described in ``faregate.mocks.faults``.  A streamed answer written
event by event watches for the client's disconnect and stops generating at once,
as a real server frees its GPU slot.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from faregate.mocks.faults import (
    BadFault,
    Fault,
    FaultSwitch,
    MockDrop,
    MockStats,
    sleep_unless_gone,
    until_disconnect,
)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_COMPLETION_TOKENS = 16
MAX_COMPLETION_TOKENS = 1_000_000  # keeps a silly max_tokens from eating the RAM
EMBEDDING_DIM = 8


def _error_body(message: str, type_: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


_HEALTH = orjson.dumps({"status": "ok"})
_MODEL = {"id": "mock-model", "object": "model", "created": 0, "owned_by": "faregate-mock"}
_MODELS = orjson.dumps({"object": "list", "data": [_MODEL]})
_NOT_FOUND = _error_body("Not found", "invalid_request_error", "not_found")
_BAD_KEY = _error_body("Incorrect API key provided", "invalid_request_error", "invalid_api_key")
_BAD_JSON = _error_body("Invalid JSON body", "invalid_request_error")
_DONE = b"data: [DONE]\n\n"
_SSE_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
}


class _BadRequest(Exception):
    """Raised by validation; turned into a 400 in OpenAI's error shape."""


async def _send_json(send: Send, status: int, body: bytes,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
               *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    msg = await receive()
    body: bytes = msg.get("body", b"")
    if not msg.get("more_body"):  # the common case: one message, no join
        return body
    parts = [body]
    while msg.get("more_body"):
        msg = await receive()
        parts.append(msg.get("body", b""))
    return b"".join(parts)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is not a count


def _words(text: str) -> int:
    return len(text.split())


def _model(req: dict[str, Any]) -> str:
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' is required and must be a non-empty string")
    return model


def _inputs(value: object, field: str) -> list[Any]:
    """Normalise a prompt/input to a list of items: strings or token-id lists."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(_is_int(v) for v in value):
            return [value]
        if all(isinstance(v, list) and v and all(_is_int(t) for t in v) for v in value):
            return value
    raise _BadRequest(f"'{field}' must be a string, a string array or an array of token arrays")


def _item_tokens(item: str | list[int]) -> int:
    return _words(item) if isinstance(item, str) else len(item)


def _content_words(content: object) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return _words(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if not isinstance(part, dict):
                raise _BadRequest("'messages[].content' parts must be objects")
            text = part.get("text")
            total += _words(text) if isinstance(text, str) else 0
        return total
    raise _BadRequest("'messages[].content' must be a string, an array of parts or null")


def _max_tokens(req: dict[str, Any]) -> tuple[int, str]:
    for key in ("max_completion_tokens", "max_tokens"):
        v = req.get(key)
        if v is not None:
            if not _is_int(v) or not 0 <= v <= MAX_COMPLETION_TOKENS:
                raise _BadRequest(f"'{key}' must be an integer in [0, {MAX_COMPLETION_TOKENS}]")
            return v, "length"
    return DEFAULT_COMPLETION_TOKENS, "stop"


def _stream_opts(req: dict[str, Any]) -> tuple[bool, bool]:
    stream = req.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean")
    opts = req.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise _BadRequest("'stream_options' must be an object")
    return bool(stream), bool(stream and opts and opts.get("include_usage") is True)


def _embedding(item: str | list[int]) -> list[float]:
    key = item.encode() if isinstance(item, str) else orjson.dumps(item)
    digest = hashlib.blake2b(key, digest_size=2 * EMBEDDING_DIM).digest()
    return [round(h / 32767.5 - 1.0, 6) for h in struct.unpack(f"<{EMBEDDING_DIM}H", digest)]


def _choice(
    chat: bool, stream: bool, text: str | None, finish: str | None, role: bool = False
) -> dict[str, Any]:
    """One choices[] entry; text None is the empty closing delta of a stream."""
    if not chat:
        return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}
    if stream:
        delta = {} if text is None else {"content": text}
        if role:
            delta = {"role": "assistant", **delta}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    message = {"role": "assistant", "content": text, "refusal": None}
    return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}


def _forced_tool_call(req: dict[str, Any]) -> dict[str, Any] | None:
    """The tool call a request's tool_choice forces, if it forces one."""
    tools, choice = req.get("tools"), req.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return None
    functions: list[dict[str, Any]] = [
        t["function"] for t in tools
        if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    function: dict[str, Any] | None
    if choice == "required" and functions:
        function = functions[0]
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        function = next((f for f in functions if f.get("name") == name), None)
        if function is None:
            raise _BadRequest(f"tool_choice names a function not in tools: {name}")
    else:
        return None
    params = function.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    args = {k: "mock" for k, v in (props or {}).items()
            if isinstance(v, dict) and v.get("type") == "string"}
    return {"id": "call_mock_1", "type": "function",
            "function": {"name": str(function.get("name")), "arguments": orjson.dumps(args)
                         .decode()}}


FAULT_MODEL_PREFIX = "fault-"
COMPLETIONS_ONLY_PREFIX = "completions-only"
_NOT_CHAT = _error_body("This is not a chat model and thus not supported in the "
                        "v1/chat/completions endpoint. Did you mean to use v1/completions?",
                        "invalid_request_error", "model_not_found")
SLOW_MODEL_PREFIX = "slow-"
BREAK_MODEL_PREFIX = "break-"
_MALFORMED = b'{"id": "mock-malformed", "choices": [{"message": '
_MALFORMED_EVENT = b'data: {"id": "mock-malformed", "choices": [\n\n'


def _model_fault(model: str) -> Fault | None:
    """The fault a deployment asks for by its upstream model name, if any."""
    if model in ("hang", "malformed"):
        return Fault(mode=model)
    if model.startswith(BREAK_MODEL_PREFIX) and model[len(BREAK_MODEL_PREFIX):].isdigit():
        return Fault(mode="break", after=int(model[len(BREAK_MODEL_PREFIX):]))
    return None


class MockUpstream:
    """ASGI callable; all state (options, id counter) lives on the instance."""

    def __init__(self, latency_ms: float = 0.0, api_key: str | None = None,
                 template_tokens: int = 3) -> None:
        self.latency_s = max(0.0, latency_ms) / 1000.0
        self._template_tokens = max(0, template_tokens)
        self._auth = b"Bearer " + api_key.encode() if api_key is not None else None
        self._ids = itertools.count(1)
        self.stats = MockStats()
        self.faults = FaultSwitch()
        # path (without /v1) -> (method, handler or None for constant bodies, constant body)
        self._routes: dict[str, tuple[str, Callable[..., Awaitable[None]] | None, bytes]] = {
            "/chat/completions": ("POST", self._chat, b""),
            "/completions": ("POST", self._completions, b""),
            "/embeddings": ("POST", self._embeddings, b""),
            "/models": ("GET", None, _MODELS),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        path: str = scope["path"]
        auth = fault = None
        for name, value in scope["headers"]:  # ASGI header names are lowercase
            if name == b"authorization":
                auth = value
            elif name == b"x-mock-status":
                fault = value
        if path.startswith("/mock/"):
            return await self._control(scope["method"], path, receive, send)
        if path == "/health" and scope["method"] == "GET":
            route: tuple[str, Any, bytes] | None = ("GET", None, _HEALTH)
        else:
            route = self._routes.get(path[3:] if path.startswith("/v1/") else path)
            if route is not None and self._auth is not None and auth != self._auth:
                return await _send_json(send, 401, _BAD_KEY)
        if route is None or route[0] != scope["method"]:
            return await _send_json(send, 404, _NOT_FOUND)
        if fault is not None:
            return await _send_fault(send, fault)
        handler = route[1]
        if handler is None:
            return await _send_json(send, 200, route[2])
        try:
            req = orjson.loads(await _read_body(receive))
        except orjson.JSONDecodeError:
            return await _send_json(send, 400, _BAD_JSON)
        if isinstance(req, dict) and str(req.get("model", "")).startswith(FAULT_MODEL_PREFIX):
            # A deployment can point at model "fault-<status>" to simulate a failing upstream.
            return await _send_fault(send, req["model"][len(FAULT_MODEL_PREFIX):].encode())
        self.stats.requests += 1
        fault = self.faults.draw()
        if fault is not None:
            self.stats.faults_injected += 1
        elif isinstance(req, dict):
            fault = _model_fault(str(req.get("model", "")))
        try:
            if not isinstance(req, dict):
                raise _BadRequest("The request body must be a JSON object")
            await handler(req, send, receive, fault)
        except _BadRequest as exc:
            await _send_json(send, 400, _error_body(str(exc), "invalid_request_error"))

    async def _control(self, method: str, path: str, receive: Receive, send: Send) -> None:
        """/mock/faults, /mock/stats, /mock/reset: how another process drives this mock."""
        if (method, path) == ("GET", "/mock/stats"):
            return await _send_json(send, 200, orjson.dumps(self.stats.as_dict()))
        if (method, path) == ("GET", "/mock/faults"):
            return await _send_json(send, 200, orjson.dumps(self.faults.fault))
        if (method, path) == ("POST", "/mock/reset"):
            self.faults.set(Fault())
            self.stats = MockStats(active_streams=self.stats.active_streams)
            return await _send_json(send, 200, orjson.dumps(self.stats.as_dict()))
        if (method, path) == ("POST", "/mock/faults"):
            try:
                self.faults.set(Fault.parse(orjson.loads(await _read_body(receive))))
            except (orjson.JSONDecodeError, BadFault, TypeError) as exc:
                msg = f"/mock/faults: {exc}" if isinstance(exc, BadFault) else \
                    "/mock/faults takes a JSON object like {\"mode\": \"error\", \"status\": 503}"
                return await _send_json(send, 400, _error_body(msg, "invalid_request_error"))
            return await _send_json(send, 200, orjson.dumps(self.faults.fault))
        await _send_json(send, 404, _NOT_FOUND)

    async def _fault_answered(self, fault: Fault | None, send: Send, receive: Receive,
                              stream: bool) -> bool:
        """Apply the faults that replace or delay the answer; True if one answered."""
        if fault is None:
            return False
        if fault.mode == "error":
            await _send_fault(send, str(fault.status).encode(), fault.retry_after)
            return True
        if fault.mode == "slow":
            await asyncio.sleep(fault.ms / 1000)
        elif fault.mode == "hang":
            await until_disconnect(receive)
            return True
        elif fault.mode == "down" or (fault.mode == "break" and not stream):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            raise MockDrop("dropped on purpose")
        elif fault.mode == "malformed" and not stream:
            await _send_json(send, 200, _MALFORMED)
            return True
        return False

    async def _sleep(self) -> None:
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)

    async def _chat(self, req: dict[str, Any], send: Send, receive: Receive,
                    fault: Fault | None) -> None:
        model = _model(req)
        if model.startswith(COMPLETIONS_ONLY_PREFIX):
            return await _send_json(send, 404, _NOT_CHAT)
        messages = req.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("'messages' must be a non-empty array")
        prompt = self._template_tokens
        for m in messages:
            if not isinstance(m, dict):
                raise _BadRequest("'messages' items must be objects")
            prompt += _content_words(m.get("content")) + 4
        await self._generate(send, receive, fault, req, model, prompt, chat=True)

    async def _completions(self, req: dict[str, Any], send: Send, receive: Receive,
                           fault: Fault | None) -> None:
        model = _model(req)
        prompt = sum(_item_tokens(i) for i in _inputs(req.get("prompt"), "prompt"))
        await self._generate(send, receive, fault, req, model, prompt, chat=False)

    async def _generate(self, send: Send, receive: Receive, fault: Fault | None,
                        req: dict[str, Any], model: str, prompt: int, chat: bool) -> None:
        n, finish = _max_tokens(req)
        stream, include_usage = _stream_opts(req)  # validate everything before sleeping
        if await self._fault_answered(fault, send, receive, stream):
            return
        await self._sleep()
        call = _forced_tool_call(req) if chat else None
        if chat:
            obj = "chat.completion.chunk" if stream else "chat.completion"
        else:
            obj = "text_completion"
        cid = f"{'chatcmpl' if chat else 'cmpl'}-mock-{next(self._ids)}"
        head = {"id": cid, "object": obj, "created": int(time.time()), "model": model}
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        if call is not None:
            return await self._tool_call(send, receive, head, call, usage, stream,
                                         include_usage)
        if not stream:
            choice = _choice(chat, False, " ".join(["mock"] * n), finish)
            body = orjson.dumps({**head, "choices": [choice], "usage": usage})
            return await _send_json(send, 200, body)

        tail = {"usage": None} if include_usage else {}

        def event(choices: list[Any], extra: dict[str, Any] | None = None) -> bytes:
            obj = {**head, "choices": choices, **(tail if extra is None else extra)}
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        events = [event([_choice(True, True, "", None, role=True)])] if chat else []
        if n:
            events.append(event([_choice(chat, True, "mock", None)]))
            # every later token chunk is identical: serialise it once
            events.append(event([_choice(chat, True, " mock", None)]) * (n - 1))
        events.append(event([_choice(chat, True, None, finish)]))
        if include_usage:
            events.append(event([], {"usage": usage}))
        events.append(_DONE)
        if fault is not None and fault.mode == "malformed":
            events = [_MALFORMED_EVENT, _DONE]
        delay = 0.0
        if model.startswith(SLOW_MODEL_PREFIX):
            delay = float(model[len(SLOW_MODEL_PREFIX):] or 0) / 1000
        break_after = fault.after if fault is not None and fault.mode == "break" else None
        await self._stream(send, receive, events, delay, break_after)

    async def _tool_call(self, send: Send, receive: Receive, head: dict[str, Any],
                         call: dict[str, Any], usage: dict[str, int], stream: bool,
                         include_usage: bool) -> None:
        if not stream:
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            choice = {"index": 0, "message": message, "logprobs": None,
                      "finish_reason": "tool_calls"}
            return await _send_json(send, 200, orjson.dumps({**head, "choices": [choice],
                                                             "usage": usage}))
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        first = {**call, "index": 0,
                 "function": {**call["function"], "arguments": arguments[:half]}}
        deltas = [{"role": "assistant", "content": None, "tool_calls": [first]},
                  {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]}]
        events = [b"data: " + orjson.dumps({**head, "choices": [
            {"index": 0, "delta": d, "logprobs": None, "finish_reason": None}]}) + b"\n\n"
            for d in deltas]
        events.append(b"data: " + orjson.dumps({**head, "choices": [
            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}]})
            + b"\n\n")
        if include_usage:
            events.append(b"data: " + orjson.dumps({**head, "choices": [], "usage": usage})
                          + b"\n\n")
        events.append(_DONE)
        await self._stream(send, receive, events, 0.0, None)

    async def _stream(self, send: Send, receive: Receive, events: list[bytes], delay: float,
                      break_after: int | None) -> None:
        stats = self.stats
        await send(_SSE_START)
        stats.streams_started += 1
        stats.active_streams += 1
        try:
            if not delay and break_after is None:
                # No per-token delay: one body write (chunked) is the cheapest correct stream.
                await send({"type": "http.response.body", "body": b"".join(events)})
                stats.streams_completed += 1
                return
            # One event per write, <delay> apart, like a real model decoding; a client that
            # leaves stops the generation (the server's receive() reports the disconnect).
            gone = asyncio.Event()
            watcher = asyncio.ensure_future(until_disconnect(receive))
            watcher.add_done_callback(lambda _: gone.set())
            try:
                for i, chunk in enumerate(b"".join(events).split(b"\n\n")[:-1]):
                    if break_after is not None and i >= break_after:
                        stats.streams_broken += 1
                        raise MockDrop("stream broken on purpose")
                    await send({"type": "http.response.body", "body": chunk + b"\n\n",
                                "more_body": True})
                    if delay:
                        await sleep_unless_gone(gone, delay)
                    if gone.is_set():
                        stats.streams_cancelled += 1
                        return
                await send({"type": "http.response.body", "body": b""})
                stats.streams_completed += 1
            finally:
                watcher.cancel()
        finally:
            stats.active_streams -= 1

    async def _embeddings(self, req: dict[str, Any], send: Send, receive: Receive,
                          fault: Fault | None) -> None:
        model = _model(req)
        items = _inputs(req.get("input"), "input")
        fmt = req.get("encoding_format")
        if fmt not in (None, "float", "base64"):
            raise _BadRequest("'encoding_format' must be 'float' or 'base64'")
        if await self._fault_answered(fault, send, receive, False):
            return
        await self._sleep()
        data = []
        for i, item in enumerate(items):
            vec: Any = _embedding(item)
            if fmt == "base64":  # the openai SDK asks for base64 (float32 LE) by default
                vec = base64.b64encode(struct.pack(f"<{EMBEDDING_DIM}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        tokens = sum(_item_tokens(i) for i in items)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        body = orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})
        await _send_json(send, 200, body)


async def _send_fault(send: Send, raw: bytes, retry_after: float = 0.0) -> None:
    try:
        code = int(raw)
    except ValueError:
        code = 0
    if not 400 <= code <= 599:
        msg = "x-mock-status must be an HTTP error status (400-599)"
        return await _send_json(send, 400, _error_body(msg, "invalid_request_error"))
    type_ = "rate_limit_error" if code == 429 else "invalid_request_error"
    if code >= 500:
        type_ = "server_error"
    extra = [(b"retry-after", f"{retry_after:g}".encode())] if retry_after else []
    await _send_json(send, code, _error_body(f"mock fault {code}", type_), extra)


async def _lifespan(receive: Receive, send: Send) -> None:
    # Nothing to set up; answer the protocol so servers run with lifespan "on" work too.
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def build_app(latency_ms: float = 0.0, api_key: str | None = None,
              template_tokens: int = 3) -> MockUpstream:
    """Return the mock upstream as an ASGI callable."""
    return MockUpstream(latency_ms=latency_ms, api_key=api_key, template_tokens=template_tokens)


def serve(host: str, port: int, latency_ms: float = 0.0, api_key: str | None = None,
          template_tokens: int = 3) -> None:
    """Run the mock upstream with uvicorn, tuned for throughput (blocks)."""
    import uvicorn  # local import: the app itself does not need uvicorn

    # A dropped connection is a fault asked for, not an error worth a traceback in the log.
    logging.getLogger("uvicorn.error").addFilter(
        lambda record: not (record.exc_info and isinstance(record.exc_info[1], MockDrop)))
    uvicorn.run(
        build_app(latency_ms=latency_ms, api_key=api_key, template_tokens=template_tokens),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
