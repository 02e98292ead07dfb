//! The fused 1x1 convolution (`effnet::ops::pointwise_conv_affine_act`: the expansions, projections and
//! head of every MBConv network) on EfficientNet-B0's and MobileNetV2's layer shapes, with swish, ReLU6
//! or no activation as those layers have, against candle's matrix product of the same sizes.
//!
//! Throughput is reported in elements/s where one element is one FLOP (2 per multiply-add), so
//! "Gelem/s" reads as GFLOP/s. The kernel's register blocks cover 48 pixels (three vectors), so the
//! larger maps (many blocks per row) and the 7×7 maps (49 = 48 + 1, the last pixel as dot products)
//! run different code: a change that slows one
//! and not the other (e.g. LLVM keeping the accumulators in memory) shows here, where a whole-network
//! timing hides it among the other layers.
//!
//! ```text
//! cargo bench --bench pointwise                  # full run
//! cargo bench --bench pointwise -- --quick       # short sanity pass
//! cargo bench --bench pointwise -- 672to112      # one shape
//! ```

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use effnet::config::Activation;
use effnet::ops::{pointwise_conv_affine_act, Act};
use std::hint::black_box;

/// (input channels, output channels, map size, activation)
const SHAPES: [(usize, usize, usize, Act); 8] = [
    (16, 96, 112, Act::Net(Activation::Swish)),
    (96, 24, 56, Act::Identity),
    (144, 24, 56, Act::Identity),
    (40, 240, 28, Act::Net(Activation::Swish)),
    (672, 112, 14, Act::Identity),
    (112, 672, 14, Act::Net(Activation::Swish)),
    (1152, 192, 7, Act::Identity),
    (960, 160, 7, Act::Net(Activation::Relu6)),
];

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("pointwise");
    for (ci, co, size, act) in SHAPES {
        let x = Tensor::randn(0f32, 1., (1, ci, size, size), &dev).expect("input");
        let w = Tensor::randn(0f32, 0.1, (1, co, ci), &dev).expect("weight");
        let scale = Tensor::ones((1, co), DType::F32, &dev).expect("scale");
        let shift = Tensor::randn(0f32, 0.1, (1, co), &dev).expect("shift");
        group.throughput(Throughput::Elements((2 * ci * co * size * size) as u64));
        let id = format!("{ci}to{co}_{size}x{size}");
        group.bench_function(BenchmarkId::new("effnet_fused", &id), |bench| {
            bench.iter(|| {
                pointwise_conv_affine_act(black_box(&x), &w, &scale, &shift, act).expect("kernel")
            })
        });
        let (w2, x2) = (
            w.reshape((co, ci)).expect("weight matrix"),
            x.reshape((ci, size * size)).expect("input matrix"),
        );
        group.bench_function(BenchmarkId::new("candle_matmul", &id), |bench| {
            bench.iter(|| w2.matmul(black_box(&x2)).expect("matmul"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
