#!/usr/bin/env python3
"""Counts the instructions a `calculator` call takes on each path of the
scheduler bench's (c) section, under callgrind: far steadier than timings
on a shared host, which move by ±5 % from run to run. The count still
moves with how the runners' batches fall, by up to 2 % between runs, so
a change of a few hundred instructions a job needs several runs of each
build.

    cargo bench -p work-engine --bench scheduler --no-run   # prints BENCH, the binary
    scripts/count-instructions.py BENCH [--top N] [--keep DIR] [--cache]
    scripts/count-instructions.py - --dumps DIR [--top N]   # read a kept run again

It runs BENCH under `valgrind --tool=callgrind` with BENCH_SECTIONS=c,
BENCH_PAIRS=2 and BENCH_CALLS=12500 (about three minutes): 12,500 jobs a
round is what the memory store retires at once, so every scheduled round
holds one retirement. The bench calls a mark function as each round begins
and ends (`marks` in engine/benches/scheduler.rs), and callgrind dumps its
counts on entering one, so each dump is one round. Printed: instructions
per call on the direct path, per job on the two scheduled ones, their
ratio, and with --top the functions whose own (exclusive) instructions
differ most between the last direct round and the last all-at-once one.

With --cache, callgrind simulates the caches as well (a 512 KiB last
level, as this host's L2; about twice as slow), and L1 and last-level data
misses a call are printed beside the instructions, and listed by --top.

Callgrind runs the threads one at a time and cannot reserve the instance
pool's address space, so wasmtime falls back to on-demand instances there:
the WASM call's share is not what it is in a real run. What the scheduler
adds around the call is.
"""

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

CALLS = 12_500
MARKS = {
    "direct_round_mark": "direct ToolHost::call",
    "all_at_once_round_mark": "tool_call jobs, all at once",
    "in_flight_round_mark": "tool_call jobs, 256 in flight",
}
NAME = re.compile(r"(c?fn)=\((\d+)\)(?: (.*))?")


def exclusive_costs(path, event="Ir"):
    """`event` (instructions unless told) per function, its own only (not
    its callees')."""
    names, costs, current, after_call = {}, collections.Counter(), None, False
    columns = None
    with open(path, errors="replace") as dump:
        for line in dump:
            if line.startswith("events:"):
                columns = [1 + line.split()[1:].index(e) for e in event.split("+")]
                continue
            named = NAME.match(line.rstrip("\n"))
            if named:
                kind, number, name = named.groups()
                if name:
                    # Code without a symbol is the guest's, compiled by
                    # wasmtime, at an address that differs run to run.
                    names[number] = (
                        "(the guest's compiled code)"
                        if name.startswith("0x")
                        else re.sub(r"'\d+$", "", name)
                    )
                if kind == "fn":
                    current = names.get(number)
            elif line.startswith("calls="):
                # The next cost line is the call's inclusive cost.
                after_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                elif current is not None:
                    fields = line.split()
                    costs[current] += sum(
                        int(fields[c]) for c in columns if c < len(fields)
                    )
    return costs


def trigger(path):
    """The mark whose entry ended this dump."""
    with open(path, errors="replace") as dump:
        for line in dump:
            if line.startswith("desc: Trigger:"):
                return line.rsplit("::", 1)[-1].strip()
    return None


def rounds(directory):
    """(path name, dump) for each round, in order: a dump is a round of
    the path whose mark ended the dump before it."""
    dumps = sorted(
        glob.glob(os.path.join(directory, "callgrind.out.*.*")),
        key=lambda p: int(p.rsplit(".", 1)[1]),
    )
    found, begun = [], None
    for dump in dumps:
        if begun in MARKS:
            found.append((MARKS[begun], dump))
        begun = trigger(dump)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", help="the scheduler bench's binary")
    parser.add_argument("--top", type=int, default=0, help="functions to list")
    parser.add_argument("--keep", help="keep callgrind's dumps in this folder")
    parser.add_argument(
        "--cache",
        action="store_true",
        help="simulate the caches too (a 512 KiB last level, as this host's L2;"
        " twice as slow) and count misses beside instructions",
    )
    parser.add_argument(
        "--dumps", help="read the dumps a run with --keep left in this folder instead of running"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    directory = args.dumps or args.keep or tempfile.mkdtemp(prefix="count-instructions-")
    os.makedirs(directory, exist_ok=True)
    env = dict(os.environ, BENCH_SECTIONS="c", BENCH_PAIRS="2", BENCH_CALLS=str(CALLS))
    cache = ["--cache-sim=yes", "--LL=524288,8,64"] if args.cache else []
    if not args.dumps:
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                *cache,
                "--dump-before=*_round_mark",
                f"--callgrind-out-file={directory}/callgrind.out.%p",
                os.path.abspath(args.bench),
                "--bench",
            ],
            env=env,
            cwd=directory,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    found = rounds(directory)
    simulated = any(line.startswith("events:") and "DLmr" in line for line in open(found[0][1]))
    events = {"Ir": "instructions"}
    if simulated:
        events.update({"D1mr+D1mw": "L1 data misses", "DLmr+DLmw": "last-level data misses"})
    per_path = collections.defaultdict(lambda: collections.defaultdict(list))
    last = {}
    for path, dump in found:
        for event in events:
            costs = exclusive_costs(dump, event)
            per_path[event][path].append(sum(costs.values()) / CALLS)
            last[path, event] = costs
    for event, what in events.items():
        direct = per_path[event].get(MARKS["direct_round_mark"])
        if not direct:
            sys.exit(f"no rounds found in {directory}: is {args.bench} the scheduler bench?")
        base = min(direct)
        for path, counts in per_path[event].items():
            figures = ", ".join(f"{c:,.1f}" if c < 100 else f"{c:,.0f}" for c in counts)
            print(f"{path:<32} {figures:>20} {what} a call  ({min(counts) / base:.3f}x)")
    for event, what in events.items():
        if not args.top:
            break
        all_at_once = last[MARKS["all_at_once_round_mark"], event]
        direct_costs = last[MARKS["direct_round_mark"], event]
        differences = {
            name: (all_at_once[name] - direct_costs[name]) / CALLS
            for name in set(all_at_once) | set(direct_costs)
        }
        print(f"\nown {what} a call, direct -> all at once (the {args.top} largest differences):")
        for name in sorted(differences, key=lambda n: -abs(differences[n]))[: args.top]:
            print(
                f"{direct_costs[name] / CALLS:9.1f} {all_at_once[name] / CALLS:9.1f}"
                f" {differences[name]:+8.1f}  {name[-100:]}"
            )
    if not (args.keep or args.dumps):
        shutil.rmtree(directory)


if __name__ == "__main__":
    main()
