//! Depthwise convolution on EfficientNet-B0's largest depthwise shapes: `effnet::ops` CPU kernel,
//! its device-generic tensor-op formulation, and candle's grouped `conv2d` (groups = C).
//!
//! Throughput is reported in elements/s where one element is one FLOP (2 per multiply-add), so
//! "Gelem/s" reads as GFLOP/s.
//!
//! ```text
//! cargo bench --bench depthwise                    # full run
//! cargo bench --bench depthwise -- --quick         # short sanity pass
//! cargo bench --bench depthwise -- 672x14x14       # one shape
//! ```

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use effnet::ops::{depthwise_conv2d, depthwise_conv2d_shifted, Pad2d};
use std::hint::black_box;

/// (batch, channels, size, kernel, stride)
const SHAPES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 96, 112, 3, 2),
    (1, 144, 56, 3, 1),
    (1, 240, 28, 5, 1),
    (1, 672, 14, 5, 1),
    (1, 1152, 7, 5, 1),
    (16, 144, 56, 3, 1),
    (16, 672, 14, 5, 1),
];

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("depthwise");
    for (b, ch, size, k, s) in SHAPES {
        let x = Tensor::randn(0f32, 1., (b, ch, size, size), &dev).expect("input");
        let w = Tensor::randn(0f32, 1., (ch, 1, k, k), &dev).expect("weight");
        let pad = Pad2d::uniform(k / 2);
        let out = (size + 2 * (k / 2) - k) / s + 1;
        let flops = 2 * b * ch * out * out * k * k;
        group.throughput(Throughput::Elements(flops as u64));
        let id = format!("{b}x{ch}x{size}x{size}_k{k}_s{s}");
        group.bench_function(BenchmarkId::new("effnet_kernel", &id), |bench| {
            bench.iter(|| {
                depthwise_conv2d(black_box(&x), black_box(&w), (s, s), pad).expect("kernel")
            })
        });
        group.bench_function(BenchmarkId::new("effnet_shifted", &id), |bench| {
            bench.iter(|| {
                depthwise_conv2d_shifted(black_box(&x), black_box(&w), (s, s), pad)
                    .expect("shifted")
            })
        });
        group.bench_function(BenchmarkId::new("candle_grouped", &id), |bench| {
            bench.iter(|| {
                black_box(&x)
                    .conv2d(black_box(&w), k / 2, s, 1, ch)
                    .expect("conv2d")
            })
        });
        // Half precision through the same kernel (f32 accumulation).
        let (xh, wh) = (
            x.to_dtype(DType::BF16).expect("bf16"),
            w.to_dtype(DType::BF16).expect("bf16"),
        );
        group.bench_function(BenchmarkId::new("effnet_kernel_bf16", &id), |bench| {
            bench.iter(|| {
                depthwise_conv2d(black_box(&xh), black_box(&wh), (s, s), pad).expect("kernel")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
