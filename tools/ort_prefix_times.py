#!/usr/bin/env python3
"""ONNX Runtime's time per unit of a timm model (stem, each block, head, pool + classifier), without its profiler.

    .venv/bin/python tools/ort_prefix_times.py --model efficientnet_b0 --rounds 30
    cargo run --release --example bench -- --model efficientnet_b0 --fuse --threads 2 --per-block --json

ONNX Runtime's own profiler (`enable_profiling`) slows the run too much to compare node times with
effnet's. This script exports every prefix of the network (stem; stem + first block; ...; the whole
model) as its own ONNX model, runs them interleaved on `--threads` threads (random weights, fp32,
224x224, batch 1) and prints, per unit, the median and fastest time of its prefix and the differences
between neighbouring prefixes: ONNX Runtime's time for that unit, to set beside the `per_block_min_ms`
of effnet's `bench --per-block`. The differences of medians are noisy on a shared host (a unit can come
out negative); those of the fastest passes are steadier.
"""

import argparse
import os
import statistics
import tempfile
import time

import onnxruntime as ort
import timm
import torch


def units(model):
    """(name, module) of the model's stem, blocks, head and pool + classifier, in order."""
    out = [("stem", torch.nn.Sequential(model.conv_stem, model.bn1))]
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            out.append((f"blocks.{i}.{j}", block))
    out.append(("head", torch.nn.Sequential(model.conv_head, model.bn2)))
    out.append(("pool+cls", torch.nn.Sequential(model.global_pool, model.classifier)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_b0", help="a timm EfficientNet or MobileNetV2 name")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30, help="rounds of 10 passes of every prefix")
    args = ap.parse_args()
    model = timm.create_model(args.model, pretrained=False).eval()
    parts = units(model)
    x = torch.randn(1, 3, 224, 224)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(1, len(parts) + 1):
            prefix = torch.nn.Sequential(*[m for _, m in parts[:n]]).eval()
            path = os.path.join(tmp, f"prefix_{n}.onnx")
            torch.onnx.export(prefix, x, path, opset_version=17, dynamo=False)
            sessions.append(ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]))
    feeds = [{s.get_inputs()[0].name: x.numpy()} for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(5):
            s.run(None, f)
    times = [[] for _ in sessions]
    for _ in range(args.rounds):
        for k, (s, f) in enumerate(zip(sessions, feeds)):
            for _ in range(10):
                t0 = time.perf_counter()
                s.run(None, f)
                times[k].append((time.perf_counter() - t0) * 1e3)
    print(f"{args.model}, ONNX Runtime {ort.__version__}, {args.threads} threads, ms")
    print(f"{'unit':12s} {'prefix median':>13s} {'unit':>7s} {'prefix min':>10s} {'unit':>7s}")
    prev_med = prev_min = 0.0
    for (name, _), t in zip(parts, times):
        med, fastest = statistics.median(t), min(t)
        print(f"{name:12s} {med:13.3f} {med - prev_med:7.3f} {fastest:10.3f} {fastest - prev_min:7.3f}")
        prev_med, prev_min = med, fastest


if __name__ == "__main__":
    main()
