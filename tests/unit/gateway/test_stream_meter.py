"""The relay's meter counts what a stream produced, however the network split its events."""

from __future__ import annotations

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
