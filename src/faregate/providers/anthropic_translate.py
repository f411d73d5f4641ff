"""OpenAI chat completions <-> Anthropic's Messages API, as pure functions (no I/O).

Request: `to_messages_request(body, model, default_max_tokens)` turns an OpenAI chat request
into a Messages API request, or raises InvalidRequest naming the parameter it cannot honour.
Answer: `from_message(message, created)` turns an Anthropic Message into a chat.completion;
`StreamTranslator` turns Anthropic's stream events into chat.completion.chunk objects.
`openai_usage(usage)` gives OpenAI's usage shape and keeps Anthropic's cache counts
(`cache_read_input_tokens`, `cache_creation_input_tokens`) so the gateway can price them.

Wire format: https://docs.anthropic.com/en/api/messages and .../messages-streaming.
The `POST /v1/messages` front door reuses these names; keep them stable.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson

from faregate.errors import InvalidRequest

ANTHROPIC_VERSION = "2023-06-01"

# Anthropic's stop_reason -> OpenAI's finish_reason.
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "pause_turn": "stop", "refusal": "content_filter"}

# OpenAI parameters that change what the model returns and have no Anthropic equivalent:
# refused (400) rather than dropped, so a caller never silently gets something else.
UNSUPPORTED = {
    "logprobs": "Anthropic models do not return log probabilities",
    "top_logprobs": "Anthropic models do not return log probabilities",
    "logit_bias": "Anthropic models take no logit_bias",
    "functions": "use 'tools' (the legacy 'functions' is not translated)",
    "function_call": "use 'tool_choice' (the legacy 'function_call' is not translated)",
    "audio": "Anthropic models do not produce audio",
    "prediction": "Anthropic models take no predicted output",
}
# Sampling hints with no Anthropic equivalent: dropped (documented in docs/providers.md).
IGNORED = ("presence_penalty", "frequency_penalty", "seed", "store", "service_tier",
           "metadata", "stream_options", "reasoning_effort")

_DATA_URL = re.compile(r"data:(image/[a-zA-Z0-9.+-]+);base64,(.*)", re.DOTALL)
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def to_messages_request(body: dict[str, Any], model: str,
                        default_max_tokens: int) -> dict[str, Any]:
    """An OpenAI chat request -> a Messages API request for upstream `model`."""
    for name, why in UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and value is not False and value != {}:
            raise InvalidRequest(f"'{name}' is not supported for Anthropic models: {why}",
                                 param=name, code="unsupported_parameter")
    if (body.get("n") or 1) != 1:
        raise InvalidRequest("'n' must be 1 for Anthropic models (they return one choice)",
                             param="n", code="unsupported_parameter")
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict)
                                        or response_format.get("type") != "text"):
        raise InvalidRequest("'response_format' other than {\"type\": \"text\"} is not "
                             "supported for Anthropic models; describe the JSON wanted in the "
                             "prompt or use a tool", param="response_format",
                             code="unsupported_parameter")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise InvalidRequest("Anthropic models produce text only", param="modalities",
                             code="unsupported_parameter")

    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"model": model, "messages": messages,
                           "max_tokens": _max_tokens(body, default_max_tokens)}
    if system:
        out["system"] = system
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) \
                or not 0 <= temperature <= 1:
            raise InvalidRequest("'temperature' must be a number from 0 to 1 for Anthropic "
                                 "models", param="temperature")
        out["temperature"] = temperature
    for name in ("top_p", "top_k"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRequest(f"'{name}' must be a number", param=name)
            out[name] = value
    stop = body.get("stop")
    if stop is not None:
        sequences = [stop] if isinstance(stop, str) else stop
        if not isinstance(sequences, list) or not all(isinstance(s, str) and s.strip()
                                                      for s in sequences):
            raise InvalidRequest("'stop' must be a string or an array of non-blank strings",
                                 param="stop")
        if sequences:
            out["stop_sequences"] = sequences
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t, i) for i, t in enumerate(_list(tools, "tools"))]
    tool_choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if tool_choice is not None:
        if tool_choice["type"] != "none" and not tools:
            raise InvalidRequest("'tool_choice' needs 'tools'", param="tool_choice")
        out["tool_choice"] = tool_choice
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if body.get("stream"):
        out["stream"] = True
    return out


def _list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequest(f"'{param}' must be an array", param=param)
    return value


def _max_tokens(body: dict[str, Any], default: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidRequest(f"'{name}' must be an integer >= 1 for Anthropic models",
                                     param=name)
            return value
    return default


def _messages(value: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System blocks (every system/developer message, in order) and the conversation, with
    consecutive turns of one role merged: Anthropic wants user and assistant alternating."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(_list(value, "messages")):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object", param=where)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system += _text_blocks(content, where)
            continue
        if role == "user":
            blocks = _user_blocks(content, where)
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
        elif role == "tool":
            blocks = [_tool_result(message, where)]
            role = "user"
        else:
            raise InvalidRequest(f"{where}.role {role!r} is not supported for Anthropic "
                                 "models (use system, developer, user, assistant or tool)",
                                 param=f"{where}.role")
        if not blocks:
            continue                    # an empty assistant turn says nothing
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    if not turns or turns[0]["role"] != "user":
        raise InvalidRequest("Anthropic models need a user message before any assistant "
                             "message (system messages aside)", param="messages")
    return system, turns


def _cached(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Carry a prompt-caching breakpoint (`cache_control`) from an OpenAI part."""
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _text_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if content is None:
        return []
    blocks = []
    for j, part in enumerate(_list(content, f"{where}.content")):
        if not isinstance(part, dict) or part.get("type") != "text" \
                or not isinstance(part.get("text"), str):
            raise InvalidRequest(f"{where}.content[{j}] must be a text part here",
                                 param=f"{where}.content")
        if part["text"]:
            blocks.append(_cached({"type": "text", "text": part["text"]}, part))
    return blocks


def _user_blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        return _text_blocks(content, where)
    blocks = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append(_cached({"type": "text", "text": part["text"]}, part))
        elif kind == "image_url":
            blocks.append(_cached(_image(part.get("image_url"), f"{where}.content[{j}]"), part))
        else:
            raise InvalidRequest(f"{where}.content[{j}]: part type {kind!r} is not supported "
                                 "for Anthropic models (text and image_url are)",
                                 param=f"{where}.content")
    return blocks


def _image(image_url: Any, where: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise InvalidRequest(f"{where}.image_url.url must be a string", param=where)
    data = _DATA_URL.fullmatch(url)
    if data:
        if data.group(1) not in _IMAGE_TYPES:
            raise InvalidRequest(f"{where}: image type {data.group(1)} is not supported "
                                 f"(use one of {', '.join(_IMAGE_TYPES)})", param=where)
        return {"type": "image", "source": {"type": "base64", "media_type": data.group(1),
                                            "data": data.group(2)}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(f"{where}: an image must be a base64 data URL "
                         "(data:image/png;base64,...) or an http(s) URL", param=where)


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = _text_blocks(message.get("content"), where)
    for j, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str) \
                or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"{where}.tool_calls[{j}] needs an id and function.name",
                                 param=f"{where}.tool_calls")
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except (orjson.JSONDecodeError, TypeError):
            arguments = None
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"{where}.tool_calls[{j}].function.arguments must be a JSON "
                                 "object (as a string)", param=f"{where}.tool_calls")
        blocks.append({"type": "tool_use", "id": call["id"], "name": function["name"],
                       "input": arguments})
    return blocks


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"{where}.tool_call_id is required on a tool message",
                             param=f"{where}.tool_call_id")
    content = message.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, str):
        result["content"] = content
    elif content is not None:
        result["content"] = _text_blocks(content, where)
    return result


def _tool(tool: Any, i: int) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
            or not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"tools[{i}] must be {{\"type\": \"function\", \"function\": "
                             "{\"name\": ..., \"parameters\": {...}}} for Anthropic models",
                             param=f"tools[{i}]")
    out: dict[str, Any] = {"name": function["name"],
                           "input_schema": function.get("parameters")
                           or {"type": "object", "properties": {}}}
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    return _cached(out, tool)


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        out = None
    elif choice in ("auto", "none"):
        out = {"type": choice}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance((choice.get("function") or {}).get("name"),
                                                 str):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise InvalidRequest("'tool_choice' must be auto, none, required or "
                             "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                             param="tool_choice")
    if parallel is False:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


def openai_usage(usage: Any) -> dict[str, Any]:
    """Anthropic usage -> OpenAI's: the prompt counts every input token (fresh, read from the
    cache, written to it); the cache counts stay alongside, under Anthropic's names."""
    usage = usage if isinstance(usage, dict) else {}
    fresh = int(usage.get("input_tokens") or 0)
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    prompt = fresh + read + written
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": read},
            "cache_read_input_tokens": read, "cache_creation_input_tokens": written}


def from_message(message: dict[str, Any], created: int) -> dict[str, Any]:
    """An Anthropic Message -> an OpenAI chat.completion."""
    texts, calls = [], []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            texts.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"),
                                       "arguments": orjson.dumps(block.get("input") or {})
                                       .decode()}})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        reply["tool_calls"] = calls
    return {"id": message.get("id"), "object": "chat.completion", "created": created,
            "model": message.get("model"),
            "choices": [{"index": 0, "message": reply, "logprobs": None,
                         "finish_reason": FINISH_REASONS.get(message.get("stop_reason") or "",
                                                             "stop")}],
            "usage": openai_usage(message.get("usage"))}


def sse_events(data: bytes) -> Iterator[dict[str, Any]]:
    """The JSON payloads of the complete server-sent events in `data` (blocks split at blank
    lines); Anthropic names each event's type inside its payload too."""
    for block in data.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                payload = orjson.loads(line[5:].strip())
                if isinstance(payload, dict):
                    yield payload


class StreamTranslator:
    """Anthropic stream events -> OpenAI chat.completion.chunk objects, one event at a time.

    `feed(event)` returns the chunks to send (often none); an `error` event raises
    AnthropicStreamError. After `message_stop`, `done` is true and `usage` holds the total;
    the last chunks are the finish chunk and, with `include_usage`, a usage chunk."""

    def __init__(self, created: int, include_usage: bool) -> None:
        self._created = created
        self._include_usage = include_usage
        self._id = ""
        self._model = ""
        self._usage: dict[str, Any] = {}
        self._tool_index: dict[int, int] = {}      # content block index -> tool call index
        self._finish = "stop"
        self.done = False

    @property
    def usage(self) -> dict[str, Any]:
        return openai_usage(self._usage)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                "model": self._model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self._id, self._model = message.get("id", ""), message.get("model", "")
            self._usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tool_index[event.get("index", 0)] = len(self._tool_index)
                return [self._chunk({"tool_calls": [{
                    "index": index, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""}}]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                index = self._tool_index.get(event.get("index", 0), 0)
                return [self._chunk({"tool_calls": [{
                    "index": index, "function": {"arguments": delta.get("partial_json", "")}}]})]
            return []                   # thinking, signature, citations: not in OpenAI's shape
        if kind == "message_delta":
            stop = (event.get("delta") or {}).get("stop_reason")
            if stop:
                self._finish = FINISH_REASONS.get(stop, "stop")
            # Counts in message_delta are cumulative: they replace message_start's.
            self._usage.update({k: v for k, v in (event.get("usage") or {}).items()
                                if v is not None})
            return []
        if kind == "message_stop":
            self.done = True
            out = [self._chunk({}, self._finish)]
            if self._include_usage:
                out.append({"id": self._id, "object": "chat.completion.chunk",
                            "created": self._created, "model": self._model, "choices": [],
                            "usage": self.usage})
            return out
        if kind == "error":
            error = event.get("error") or {}
            raise AnthropicStreamError(str(error.get("type") or "api_error"),
                                       str(error.get("message") or "(no message)"))
        return []                       # ping, content_block_stop, and event types to come


class AnthropicStreamError(Exception):
    """An `error` event inside an Anthropic stream (e.g. overloaded_error)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


def chunk_bytes(chunks: list[dict[str, Any]]) -> bytes:
    """OpenAI SSE events for `chunks`."""
    return b"".join(b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks)
