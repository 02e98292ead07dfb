#!/usr/bin/env python3
"""effnet vs PyTorch (timm) on one GPU, in the same run: eval-mode forward latency per batch.

    cargo build --release --features cuda --example bench
    python3 tools/bench_gpu.py [--batch 256] [--models tf_efficientnet_b0,mobilenetv2_100]
                               [--dtypes f32,bf16] [--iters 20] [--bench target/release/examples/bench]
                               [--baseline OTHER_BENCH_BINARY]

Needs torch with CUDA and timm. Random weights, native resolution, eval mode. PyTorch runs eager with
channels_last (its fast layout for cuDNN) under torch.no_grad; f32 runs with TF32 off, so both sides do
f32 arithmetic. effnet runs its `bench` example with --gpu, BN folded (--fuse). Every configuration runs
in its own process; the table gives each one's median and minimum ms per batch and the ratio of the
medians effnet / PyTorch. With --baseline, another build of the bench example (e.g. the previous
commit's) runs each configuration too, and the table adds the ratio effnet / baseline.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

TORCH_WORKER = r'''
import json, sys, time
import torch, timm
model, batch, dtype, iters = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = True
dt = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype]
m = timm.create_model(model, pretrained=False).eval().cuda().to(dt).to(memory_format=torch.channels_last)
res = m.pretrained_cfg["input_size"][-1]
x = torch.randn(batch, 3, res, res, device="cuda", dtype=dt).to(memory_format=torch.channels_last)
with torch.no_grad():
    for _ in range(5):
        m(x)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        m(x)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
times.sort()
print(json.dumps({"median_ms": times[len(times) // 2], "min_ms": times[0],
                  "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
                  "device": torch.cuda.get_device_name(), "torch": torch.__version__}))
'''


def torch_run(model, batch, dtype, iters):
    out = subprocess.run([sys.executable, "-c", TORCH_WORKER, model, str(batch), dtype, str(iters)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def effnet_run(bench, model, batch, dtype, iters):
    out = subprocess.run([bench, "--model", model, "--batch", str(batch), "--iters", str(iters), "--dtype", dtype,
                          "--gpu", "--fuse", "--json"], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", default="tf_efficientnet_b0,efficientnet_b0,mobilenetv2_100")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--bench", default=os.path.join(ROOT, "target", "release", "examples", "bench"))
    ap.add_argument("--baseline", help="another build of the bench example to compare with")
    ap.add_argument("--json", help="also write all results to this file")
    args = ap.parse_args()
    rows = []
    for model in args.models.split(","):
        for dtype in args.dtypes.split(","):
            e = effnet_run(args.bench, model, args.batch, dtype, args.iters)
            t = torch_run(model, args.batch, dtype, args.iters)
            row = {"model": model, "batch": args.batch, "dtype": dtype, "effnet": e, "torch": t,
                   "ratio": e["median_ms"] / t["median_ms"]}
            line = (f"{model:22} b{args.batch} {dtype:5} effnet {e['median_ms']:8.1f} ms (min {e['min_ms']:.1f})  "
                    f"torch {t['median_ms']:8.1f} ms (min {t['min_ms']:.1f}, {t['peak_gpu_mb']:.0f} MB)  "
                    f"ratio {row['ratio']:.2f}")
            if args.baseline:
                b = effnet_run(args.baseline, model, args.batch, dtype, args.iters)
                row["baseline"], row["vs_baseline"] = b, e["median_ms"] / b["median_ms"]
                line += f"  baseline {b['median_ms']:8.1f} ms (effnet/baseline {row['vs_baseline']:.2f})"
            rows.append(row)
            print(line, flush=True)
    if rows:
        print(f"GPU: {rows[0]['torch']['device']}, torch {rows[0]['torch']['torch']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
