#!/usr/bin/env python3
"""Interleaved A/B of two or more builds of the `bench` example on one model.

    cargo build --release --example bench && cp target/release/examples/bench /tmp/bench_a
    # ... change the code ...
    cargo build --release --example bench && cp target/release/examples/bench /tmp/bench_b
    python3 tools/ab_bench.py --model efficientnet_b0 --batch 1 --rounds 30 /tmp/bench_a /tmp/bench_b

Each build stays loaded in its own `bench --serve` process (fused, `--threads` threads). Round by round
(the order reversed every other round) each process runs one untimed pass, then `--chunk` timed passes
(default 20 at batch 1, 3 above), after a short pause while the previous process's idle workers stop
spinning. A shared host's slow and fast spells then fall on every build alike. For each build the script
prints the median and the fastest pass, and the median (quartiles) over rounds of the ratio of its median
pass to the first build's in the same round: the figure to quote ("0.95 (0.93-0.97)": 5% faster).
Differences under about 2% are within what two identical builds show on a 2-core VM.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time


def start(binary, model, batch, threads):
    cmd = [binary, "--model", model, "--batch", str(batch), "--threads", str(threads), "--fuse", "--serve"]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if p.stdout.readline().strip() != "ready":
        sys.exit(f"{binary}: did not start ({' '.join(cmd)})")
    return p


def passes(p, k):
    """Times in ms of `k` passes of the serving process `p`."""
    p.stdin.write(f"{k}\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())["times_ms"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binaries", nargs="+", help="bench executables; ratios are against the first")
    ap.add_argument("--model", default="efficientnet_b0")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--chunk", type=int, help="timed passes per turn (default 20 at batch 1, else 3)")
    ap.add_argument("--pause", type=float, default=0.05, help="seconds before each turn")
    args = ap.parse_args()
    chunk = args.chunk or (20 if args.batch == 1 else 3)
    procs = [start(b, args.model, args.batch, args.threads) for b in args.binaries]
    medians = [[] for _ in procs]
    times = [[] for _ in procs]
    for r in range(args.rounds):
        order = range(len(procs)) if r % 2 == 0 else reversed(range(len(procs)))
        for i in order:
            time.sleep(args.pause)
            passes(procs[i], 1)
            t = passes(procs[i], chunk)
            medians[i].append(statistics.median(t))
            times[i].extend(t)
    print(f"{args.model} batch {args.batch}, {args.threads} threads, {args.rounds} rounds of {chunk} passes")
    for i, b in enumerate(args.binaries):
        ratios = sorted(m / m0 for m, m0 in zip(medians[i], medians[0]))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        print(f"{b:40s} median {statistics.median(times[i]):8.3f} ms  min {min(times[i]):8.3f}  "
              f"ratio {statistics.median(ratios):.3f} ({q[0]:.3f}-{q[2]:.3f})")
    for p in procs:
        p.stdin.close()
        p.wait()


if __name__ == "__main__":
    main()
