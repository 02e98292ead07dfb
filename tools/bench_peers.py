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
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

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
    torch.onnx.export(m, x, onnx_path, input_names=["x"], output_names=["y"], opset_version=17,
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="tf_efficientnet_b0,efficientnet_b0,mobilenetv2_100")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--impls", default="effnet,onnxruntime,torch_eager,torch_jit",
                    help="implementations to run (effnet and onnxruntime are always run: the ratio)")
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
    # effnet and ONNX Runtime run back to back within a round, so the ratio of one round is paired: it
    # cancels the host's slower and faster spells, which a ratio of the two medians does not.
    for r in results.values():
        paired = sorted(e / o for e, o in zip(r["effnet"]["round_medians_ms"],
                                              r["onnxruntime"]["round_medians_ms"]))
        r["effnet_over_ort_per_round"] = paired
    print(f"{args.threads} threads, median ms per batch (median over {args.rounds} rounds), peak RSS MB;"
          " per round: the median, lowest and highest of the rounds' effnet/ORT ratios")
    has_pt = "torch_eager" in impls
    print(f"{'config':<26}" + "".join(f"{i:>14}" for i in impls) + f"{'effnet/ORT':>12}"
          + f"{'per round':>19}" + (f"{'effnet/PT':>11}" if has_pt else ""))
    for key, r in results.items():
        row = "".join(f"{r[i]['median_ms']:>9.1f} {r[i]['peak_rss_mb']:>4.0f}" for i in impls)
        ort = r["effnet"]["median_ms"] / r["onnxruntime"]["median_ms"]
        p = r["effnet_over_ort_per_round"]
        paired = f"{statistics.median(p):.2f} ({p[0]:.2f}-{p[-1]:.2f})"
        pt = f"{r['effnet']['median_ms'] / r['torch_eager']['median_ms']:>11.2f}" if has_pt else ""
        print(f"{key:<26}{row}{ort:>12.2f}{paired:>19}{pt}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
