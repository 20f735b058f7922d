#!/usr/bin/env python3
"""Splits a profile of the scheduler bench's (c) section into the parts of
a scheduled `tool_call` job, in microseconds of CPU per job.

Record and split (docs/benchmarks.md, session 28, has a table made so):

    cargo bench -p work-engine --bench scheduler --no-run   # prints BENCH, the binary
    BENCH_SECTIONS=c BENCH_PAIRS=10 perf record -F 1000 \
        --call-graph dwarf,8192 -o perf.data BENCH --bench
    perf script -i perf.data --no-demangle -F tid,time,ip,sym > perf.txt
    scripts/profile-tool-calls.py perf.txt DIRECT_CPU_US

DIRECT_CPU_US is the bench's own figure for the direct path ("us CPU/call")
in that run: the direct path's samples stand for it, which sets the scale.
Only the alternating rounds count: they start at the first direct round
after the fresh engine's stretch (the longest gap between direct samples)
and end one direct round's length after the last direct sample's round.
Samples whose stacks were cut short (mostly inside wasmtime) are shared
between the two paths' calls in proportion to their samples.
"""

import collections
import re
import sys

HEADER = re.compile(r"^\s*\d+\s+(\d+\.\d+):")


def read_samples(path):
    """(time, [frames, innermost first]) for each sample."""
    samples, time, frames = [], None, []
    with open(path, errors="replace") as text:
        for line in text:
            header = HEADER.match(line)
            if header:
                if time is not None:
                    samples.append((time, frames))
                time, frames = float(header.group(1)), []
            elif line.strip():
                parts = line.split(None, 1)
                frames.append(parts[1].strip() if len(parts) > 1 else parts[0])
    if time is not None:
        samples.append((time, frames))
    return samples


def rounds_window(samples):
    """From the first direct round after the fresh engine's stretch to the
    end of the last pair of rounds."""
    direct = sorted(t for t, frames in samples if any("direct_calls" in f for f in frames))
    if len(direct) < 2:
        sys.exit("no direct calls in this profile: was it (c)?")
    gaps = [(direct[i + 1] - direct[i], i) for i in range(len(direct) - 1)]
    _, fresh = max(gaps)
    # A pair of rounds is a direct round and two scheduled ones: the
    # second-longest gaps between direct samples.
    pair = sorted(gap for gap, _ in gaps)[-2]
    return direct[fresh + 1], direct[-1] + pair


def part_of(frames):
    stack = " ".join(frames)
    if "direct_calls" in stack:
        return "direct"
    if "call_checked" in stack:
        return "the WASM call (call_checked)"
    if "scheduled_calls" in stack or "submit_batch" in stack:
        if "check_args" in stack:
            return "admission: the argument check"
        if "submit_batch" not in stack:
            return "the bench client: its jobs and their Vec"
        if "MemoryStore" in stack:
            return "admission: the store's insert"
        if "state5State" in stack:
            return "admission: the scheduler's state"
        if "WasmBackend" in stack:
            return "admission: the payload read and the tool looked up"
        return "admission: the rest"
    if "runner" in stack:
        if "MemoryStore" in stack:
            return "runner: the store's claim, finish and retirement"
        if "state5State" in stack:
            return "runner: the scheduler's state"
        if "WasmBackend" in stack:
            return "runner: the wasm backend around the call"
        if "executor7attempt" in stack:
            return "runner: the attempt around the backend"
        if "executor6record" in stack:
            return "runner: the record's rest"
        return "runner: its loop, the claim batch, Tokio"
    return "cut short"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    samples = read_samples(sys.argv[1])
    direct_cpu_us = float(sys.argv[2])
    start, end = rounds_window(samples)
    parts = collections.Counter(part_of(frames) for t, frames in samples if start <= t <= end)
    direct, call, cut = parts.pop("direct"), parts["the WASM call (call_checked)"], parts.pop("cut short", 0)
    parts["the WASM call (call_checked)"] = call + cut * call / (direct + call)
    direct += cut * direct / (direct + call)
    # Two scheduled rounds (all at once, 256 in flight) per direct round.
    per_job = {part: n * direct_cpu_us / direct / 2 for part, n in parts.items()}
    print(f"{sum(parts.values()) + direct:.0f} samples in the rounds, {start:.3f}-{end:.3f}")
    print(f"{'the direct path, a call':<55} {direct_cpu_us:6.2f} us")
    for part, us in sorted(per_job.items()):
        print(f"{part:<55} {us:6.2f} us")
    total = sum(per_job.values())
    print(f"{'a scheduled job':<55} {total:6.2f} us ({total / direct_cpu_us:.2f}x)")


if __name__ == "__main__":
    main()
