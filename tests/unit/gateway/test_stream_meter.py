"""The relay's meter counts what a stream produced, however the network split its events."""

from __future__ import annotations

import orjson
import pytest

from faregate.gateway.stream_meter import StreamMeter

ANTHROPIC = [
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
    b'{"input_tokens":5,"output_tokens":1}}}\n\n',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0}\n\n',
    b'event: ping\ndata: {"type": "ping"}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":'
    b'{"type":"text_delta","text":"mock"}}\n\n',
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":'
    b'{"type":"text_delta","text":" mock"}}\n\n',
    b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n',
]
OPENAI = [
    b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
    b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n',
    b"data: [DONE]\n\n",
]


def split(events: list[bytes], cuts: list[int]) -> list[bytes]:
    blocks, start = [], 0
    for cut in [*cuts, len(events)]:
        blocks.append(b"".join(events[start:cut]))
        start = cut
    return [b for b in blocks if b]


@pytest.mark.parametrize("cuts", [[], [1], [1, 2, 3, 4, 5], [4]])
def test_anthropic_events_count_only_content_deltas(cuts: list[int]) -> None:
    meter = StreamMeter(want_usage=True, anthropic_events=True)
    for block in split(ANTHROPIC, cuts):
        meter.pass_on(block)
    assert meter.produced == 2 and not meter.done


@pytest.mark.parametrize("cuts", [[], [1], [1, 2, 3], [2]])
def test_openai_chunks_count_and_the_usage_chunk_is_read(cuts: list[int]) -> None:
    meter = StreamMeter(want_usage=False)
    relayed = b"".join(meter.pass_on(block) for block in split(OPENAI, cuts))
    assert meter.produced == 2 and meter.done
    assert meter.usage == {"prompt_tokens": 3, "completion_tokens": 2}
    assert b'"usage"' not in relayed                  # not asked for: not passed on


def _reference(want_usage: bool, anthropic: bool, block: bytes) -> tuple[bytes, int, object]:
    """The meter as it was (one event at a time), for blocks of whole events."""
    produces = b"event: content_block_delta" if anthropic else b"data: {"
    usage, produced = None, 0
    if b'"usage":{' not in block and b'"usage": {' not in block:
        return block, block.count(produces), None
    out = []
    for event in block.split(b"\n\n"):
        if not event.startswith(b"data: {"):
            if event:
                produced += event.startswith(produces)
                out.append(event)
            continue
        if b'"usage":{' in event or b'"usage": {' in event:
            chunk = orjson.loads(event[6:])
            usage = chunk.get("usage") or usage
            if not want_usage:
                if not chunk.get("choices"):
                    continue
                chunk.pop("usage", None)
                event = b"data: " + orjson.dumps(chunk)
        if b'"choices":[]' not in event and b'"choices": []' not in event:
            produced += 1
        out.append(event)
    return (b"\n\n".join(out) + b"\n\n" if out else b""), produced, usage


MIXED = [
    b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
    b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}\n\n',
    b'data: {"choices":[{"delta":{"content":"b"}}],"usage":{"prompt_tokens":4,'
    b'"completion_tokens":3}}\n\n',
    b'data: {"choices":[]}\n\n',
    b'data: {"choices":[{"delta":{"content":"c"}}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":5}}\n\n',
    b"data: [DONE]\n\n",
]


@pytest.mark.parametrize("want_usage", [True, False])
@pytest.mark.parametrize("events,anthropic", [(MIXED, False), (OPENAI, False),
                                              (ANTHROPIC, True)])
@pytest.mark.parametrize("cuts", [[], [1], [2, 3], [1, 2, 3, 4, 5, 6]])
def test_the_meter_relays_and_counts_as_it_did_one_event_at_a_time(
        want_usage: bool, events: list[bytes], anthropic: bool, cuts: list[int]) -> None:
    meter = StreamMeter(want_usage, anthropic_events=anthropic)
    produced, usage = 0, None
    for block in split(events, cuts):
        out, count, seen = _reference(want_usage, anthropic, block)
        assert meter.pass_on(block) == out
        produced, usage = produced + count, seen or usage
    assert meter.produced == produced and meter.usage == usage
