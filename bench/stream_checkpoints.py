"""What checkpointing an open stream costs (spend/checkpoints.py), against what relaying it
costs the meter alone.

    python -m bench.stream_checkpoints [--streams 20000] [--chunks 100]

Each stream is opened, handed `--chunks` chunks the way Gateway._relay hands them (the meter's
pass_on, then `reached`), then closed: one checkpoint at its first event, one per 32 chunks, a
`closed` record. Prints CPU µs per stream and per chunk with and without checkpoints, and the
cost of one checkpoint and of one tick over all open streams.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from faregate.config import Deployment
from faregate.gateway.stream_meter import StreamMeter
from faregate.records import SpendRow
from faregate.spend.checkpoints import INTERRUPTED, StreamCheckpoints

T0 = datetime(2026, 12, 3, tzinfo=UTC)
D = Deployment(model_name="qwen-local", provider="openai", upstream_model="qwen-local",
               api_base="http://127.0.0.1:8001/v1", api_key=None, input_femtos=10**9,
               output_femtos=2 * 10**9, max_output_tokens=4096, prompt_overhead_tokens=0,
               per_message_overhead_tokens=0, timeout_s=60.0)
CHUNK = b"data: " + orjson.dumps({
    "id": "chatcmpl-mock-1", "object": "chat.completion.chunk", "created": 0,
    "model": "qwen-local", "choices": [{"index": 0, "delta": {"content": " mock"},
                                        "finish_reason": None}]}) + b"\n\n"


def template(i: int) -> SpendRow:
    return SpendRow(f"{i:032x}", "a" * 64, "bench", "qwen-local",
                    "http://127.0.0.1:8001/v1#qwen-local", "chat_completion", 120, 0, 0, T0,
                    T0, INTERRUPTED)


def relay_only(streams: int, chunks: int) -> float:
    start = time.process_time()
    for _ in range(streams):
        meter = StreamMeter(False)
        for _ in range(chunks):
            meter.pass_on(CHUNK)
    return time.process_time() - start


def relay_checkpointed(checkpoints: StreamCheckpoints, streams: int, chunks: int) -> float:
    templates = [template(i) for i in range(streams)]
    start = time.process_time()
    for i, row in enumerate(templates):
        if i % 1000 == 0:
            checkpoints.tick()                   # compacts the file, as the 1 s tick does
        meter = StreamMeter(False)
        stream = checkpoints.open(row, D)
        for _ in range(chunks):
            stream.reached(meter.produced)       # the previous chunk has gone out
            meter.pass_on(CHUNK)
        stream.reached(meter.produced)
        checkpoints.closed(stream)
    return time.process_time() - start


def one_checkpoint(checkpoints: StreamCheckpoints, n: int) -> float:
    stream = checkpoints.open(template(10**9), D)
    start = time.process_time()
    for delivered in range(n):
        stream.delivered = delivered
        checkpoints.save(stream)
    elapsed = time.process_time() - start
    checkpoints.closed(stream)
    return elapsed / n


def one_tick(checkpoints: StreamCheckpoints, open_streams: int) -> float:
    streams = [checkpoints.open(template(2 * 10**9 + i), D) for i in range(open_streams)]
    for stream in streams:
        stream.reached(1)
    for stream in streams:
        stream.delivered = 5                     # every one moved since
    start = time.process_time()
    checkpoints.tick()
    elapsed = time.process_time() - start
    for stream in streams:
        checkpoints.closed(stream)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=20_000)
    parser.add_argument("--chunks", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as spool:
        checkpoints = StreamCheckpoints(Path(spool), lambda: T0)
        bare = relay_only(args.streams, args.chunks)
        with_checkpoints = relay_checkpointed(checkpoints, args.streams, args.chunks)
        per_checkpoint = one_checkpoint(checkpoints, 20_000)
        tick_1000 = one_tick(checkpoints, 1000)
    us = 1e6 / args.streams
    print(f"{args.streams} streams of {args.chunks} chunks (CPU time)")
    print(f"  meter only:        {bare * us:8.2f} µs/stream  "
          f"{bare * us / args.chunks:6.3f} µs/chunk")
    print(f"  with checkpoints:  {with_checkpoints * us:8.2f} µs/stream  "
          f"{with_checkpoints * us / args.chunks:6.3f} µs/chunk")
    print(f"  checkpoint cost:   {(with_checkpoints - bare) * us:8.2f} µs/stream "
          f"({1 + args.chunks // 32} checkpoints + 1 close)")
    print(f"  one checkpoint (encode + copy into the map): {per_checkpoint * 1e6:.2f} µs")
    print(f"  one tick over 1,000 moved streams:  {tick_1000 * 1e3:.2f} ms (one copy)")


if __name__ == "__main__":
    main()
