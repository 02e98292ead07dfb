#!/usr/bin/env python3
"""effnet vs PyTorch and ONNX Runtime on the same machine, same thread count, same run.

    python3 -m venv .venv && .venv/bin/pip install torch==2.5.1 timm==1.0.15 onnx==1.23.2 onnxruntime==1.32.0
    cargo build --release --example bench
    .venv/bin/python tools/bench_peers.py [--threads 2] [--iters 20] [--rounds 3] [--json out.json]

Every measurement runs in its own process (so peak RSS is per configuration), random weights, fp32,
224x224, eval mode. Rounds interleave the implementations so that drift on a shared host hits all of them
alike; the table reports the median over rounds of each process's median latency per batch, the
ratios effnet / ONNX Runtime and effnet / PyTorch computed from those, and the median (lowest-highest)
of the effnet / ONNX Runtime ratios of single rounds, where the two ran back to back.

With --interleave, each implementation instead stays loaded in one process per configuration (effnet's
`bench --serve`) and the script alternates between them every few passes (--chunk, plus one discarded
pass after each switch and a --pause before it, while the other process's idle workers stop spinning),
for --rounds rounds, the order reversed every round. The host's slow and fast
spells (seconds to minutes on a shared machine) then fall on both sides alike: the table reports the
median pass of each, their ratio, and the median (quartiles) of the ratios of neighbouring chunks.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BENCH = os.path.join(ROOT, "target", "release", "examples", "bench")

WORKER = r'''
import json, resource, sys, time
impl, model, batch, threads, iters, onnx_path = sys.argv[1:7]
batch, threads, iters = int(batch), int(threads), int(iters)
import numpy as np
if impl == "onnxruntime":
    # No torch in this process, so that peak RSS is ONNX Runtime's own.
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    xn = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    run = lambda: sess.run(None, {"x": xn})
else:
    import torch
    torch.set_num_threads(threads)
    import timm
    x = torch.randn(batch, 3, 224, 224)
if impl == "export":
    m = timm.create_model(model, pretrained=False, exportable=True).eval()
    # The TorchScript exporter (torch >= 2.9 defaults to the torch.export one, which needs onnxscript
    # and fails to convert these models to opset 17).
    torch.onnx.export(m, x, onnx_path, input_names=["x"], output_names=["y"], opset_version=17,
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    print(json.dumps({}))
    sys.exit(0)
elif impl != "onnxruntime":
    m = timm.create_model(model, pretrained=False).eval()
    if impl == "torch_jit":
        with torch.no_grad():
            m = torch.jit.freeze(torch.jit.trace(m, x))
    def run():
        with torch.no_grad():
            return m(x)
for _ in range(3):
    run()
if iters == 0:
    # Serve: "ready", then the times of K passes for each line K on stdin, the peak RSS at the end.
    print("ready", flush=True)
    for line in sys.stdin:
        ts = []
        for _ in range(int(line)):
            t0 = time.perf_counter()
            run()
            ts.append((time.perf_counter() - t0) * 1e3)
        print(json.dumps({"times_ms": ts}), flush=True)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    sys.exit(0)
times = []
for _ in range(iters):
    t0 = time.perf_counter()
    run()
    times.append((time.perf_counter() - t0) * 1e3)
times.sort()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"median_ms": times[len(times) // 2], "min_ms": times[0], "peak_rss_mb": rss}))
'''


def worker(impl, model, batch, threads, iters, onnx_path):
    out = subprocess.run([sys.executable, "-c", WORKER, impl, model, str(batch), str(threads), str(iters), onnx_path],
                         check=True, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    return json.loads(out.stdout.strip().splitlines()[-1])


def effnet(model, batch, threads, iters):
    out = subprocess.run([BENCH, "--model", model, "--batch", str(batch), "--iters", str(iters), "--threads",
                          str(threads), "--fuse", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def serving(impl, model, batch, threads, onnx_path):
    """A process that runs `impl` on request (see --interleave), once it has printed `ready`."""
    cmd = ([BENCH, "--model", model, "--batch", str(batch), "--threads", str(threads), "--fuse", "--serve"]
           if impl == "effnet" else
           [sys.executable, "-c", WORKER, impl, model, str(batch), str(threads), "0", onnx_path])
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if p.stdout.readline().strip() != "ready":
        sys.exit(f"{impl} {model} b{batch}: did not start ({' '.join(cmd)})")
    return p


def interleaved(impls, model, batch, threads, rounds, chunk, pause, onnx_path):
    """Every implementation loaded at once, `chunk` timed passes each in turn (after one untimed pass
    that refills the caches the other evicted), `rounds` times, the order reversed every round, with
    `pause` seconds before each turn."""
    procs = {i: serving(i, model, batch, threads, onnx_path) for i in impls}
    chunks = {i: [] for i in impls}
    for r in range(rounds):
        for impl in (impls if r % 2 == 0 else impls[::-1]):
            p = procs[impl]
            # The previous process's idle workers spin for a while after its last pass (ONNX Runtime's
            # for tens of milliseconds); a pass started meanwhile shares the cores with them.
            time.sleep(pause)
            p.stdin.write(f"{chunk + 1}\n")
            p.stdin.flush()
            chunks[impl].append(json.loads(p.stdout.readline())["times_ms"][1:])
    out = {}
    for impl, p in procs.items():
        rest, _ = p.communicate()
        passes = [t for c in chunks[impl] for t in c]
        out[impl] = {"median_ms": statistics.median(passes), "min_ms": min(passes),
                     # One turn per implementation and round: its median is the round's.
                     "round_medians_ms": [statistics.median(c) for c in chunks[impl]],
                     "peak_rss_mb": json.loads(rest.strip().splitlines()[-1])["peak_rss_mb"]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="tf_efficientnet_b0,efficientnet_b0,mobilenetv2_100")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--impls", default="effnet,onnxruntime,torch_eager,torch_jit",
                    help="implementations to run (effnet and onnxruntime are always run: the ratio)")
    ap.add_argument("--interleave", action="store_true",
                    help="one process per implementation, alternating every --chunk passes (see above)")
    ap.add_argument("--chunk", type=int, default=4, help="passes per turn with --interleave (batch 1; 1 at larger batches)")
    ap.add_argument("--pause", type=float, default=0.1,
                    help="seconds between turns with --interleave, while the last one's spinning workers park")
    ap.add_argument("--json", help="write all measurements here")
    args = ap.parse_args()
    if not os.path.exists(BENCH):
        sys.exit(f"{BENCH} missing: run `cargo build --release --example bench` first")
    known = ["effnet", "onnxruntime", "torch_eager", "torch_jit"]
    wanted = set(args.impls.split(",")) | {"effnet", "onnxruntime"}
    if wanted - set(known):
        sys.exit(f"--impls: unknown {sorted(wanted - set(known))}, expected some of {known}")
    impls = [i for i in known if i in wanted]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            onnx_path = os.path.join(tmp, f"{model}.onnx")
            worker("export", model, 1, args.threads, 1, onnx_path)
            for batch in map(int, args.batches.split(",")):
                if args.interleave:
                    chunk = args.chunk if batch == 1 else 1
                    results[f"{model} b{batch}"] = interleaved(
                        impls, model, batch, args.threads, args.rounds, chunk, args.pause, onnx_path)
                    continue
                iters = max(3, args.iters // (4 if batch > 1 else 1))
                runs = {i: [] for i in impls}
                for _ in range(args.rounds):
                    for impl in impls:
                        r = (effnet(model, batch, args.threads, iters) if impl == "effnet"
                             else worker(impl, model, batch, args.threads, iters, onnx_path))
                        runs[impl].append(r)
                results[f"{model} b{batch}"] = {
                    i: {"median_ms": statistics.median(r["median_ms"] for r in rs),
                        "round_medians_ms": [r["median_ms"] for r in rs],
                        "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in rs)}
                    for i, rs in runs.items()}
    # effnet and ONNX Runtime run back to back within a round (with --interleave, within a fraction of a
    # second), so the ratio of one round is paired: it cancels the host's slower and faster spells, which a
    # ratio of the two medians does not.
    for r in results.values():
        paired = sorted(e / o for e, o in zip(r["effnet"]["round_medians_ms"],
                                              r["onnxruntime"]["round_medians_ms"]))
        r["effnet_over_ort_per_round"] = paired
    if args.interleave:
        print(f"{args.threads} threads, interleaved: median ms per batch over all timed passes, peak RSS MB;"
              " per round: the median (quartiles) of the effnet/ORT ratios of neighbouring chunks")
    else:
        print(f"{args.threads} threads, median ms per batch (median over {args.rounds} rounds), peak RSS MB;"
              " per round: the median, lowest and highest of the rounds' effnet/ORT ratios")
    has_pt = "torch_eager" in impls
    print(f"{'config':<26}" + "".join(f"{i:>14}" for i in impls) + f"{'effnet/ORT':>12}"
          + f"{'per round':>19}" + (f"{'effnet/PT':>11}" if has_pt else ""))
    for key, r in results.items():
        row = "".join(f"{r[i]['median_ms']:>9.1f} {r[i]['peak_rss_mb']:>4.0f}" for i in impls)
        ort = r["effnet"]["median_ms"] / r["onnxruntime"]["median_ms"]
        p = r["effnet_over_ort_per_round"]
        lo, hi = (p[len(p) // 4], p[3 * len(p) // 4]) if args.interleave else (p[0], p[-1])
        paired = f"{statistics.median(p):.2f} ({lo:.2f}-{hi:.2f})"
        pt = f"{r['effnet']['median_ms'] / r['torch_eager']['median_ms']:>11.2f}" if has_pt else ""
        print(f"{key:<26}{row}{ort:>12.2f}{paired:>19}{pt}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
