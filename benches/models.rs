//! Forward-pass latency of whole models (eval mode, plain tensors, random weights), effnet unfused and
//! fused, f32, f16 and bf16; with `--features peer-bench`, candle-transformers' EfficientNet-B0 in the
//! same run.
//!
//! `cargo bench --bench models` (add `-- b0` to filter, `-- F32` for f32 only). Threads: all cores
//! unless `RAYON_NUM_THREADS` says otherwise. Only f32 has the fused CPU kernels; f16 and bf16 run
//! candle's generic operations (B0 at batch 1 on 2 threads: 115 and 128 ms, against 4.7 ms fused f32).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use effnet::config::ModelConfig;
use effnet::Network;

/// Random (He-initialised) weights as plain tensors: trainable `Var`s would record the graph.
fn build(name: &str, dtype: DType) -> Network {
    let cfg = ModelConfig::from_name(name).unwrap();
    let vm = VarMap::new();
    cfg.build(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))
        .unwrap();
    let tensors = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach().to_dtype(dtype).unwrap()))
        .collect();
    cfg.build(VarBuilder::from_tensors(tensors, dtype, &Device::Cpu))
        .unwrap()
}

fn forward(c: &mut Criterion) {
    let models = [
        ("tf_efficientnet_b0", 224),
        ("efficientnet_b0", 224),
        ("mobilenetv2_100", 224),
        ("tf_efficientnet_b3", 300),
    ];
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let mut g = c.benchmark_group(format!("forward_{dtype:?}"));
        g.sample_size(10);
        for (name, res) in models {
            let net = build(name, dtype);
            let fused = net.fuse().unwrap();
            for batch in [1usize, 16] {
                let x = Tensor::randn(0f32, 1f32, (batch, 3, res, res), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                g.bench_with_input(BenchmarkId::new(name, batch), &x, |b, x| {
                    b.iter(|| net.forward_t(x, false).unwrap())
                });
                g.bench_with_input(
                    BenchmarkId::new(format!("{name}_fused"), batch),
                    &x,
                    |b, x| b.iter(|| fused.forward_t(x, false).unwrap()),
                );
            }
        }
        g.finish();
    }
}

#[cfg(feature = "peer-bench")]
fn peer(c: &mut Criterion) {
    use candle_core::Module;
    use candle_transformers::models::efficientnet::{EfficientNet, MBConvConfig};
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let net = EfficientNet::new(vb, MBConvConfig::b0(), 1000).unwrap();
    let mut g = c.benchmark_group("forward_F32");
    g.sample_size(10);
    for batch in [1usize, 16] {
        let x = Tensor::randn(0f32, 1f32, (batch, 3, 224, 224), &Device::Cpu).unwrap();
        g.bench_with_input(
            BenchmarkId::new("candle_transformers_b0", batch),
            &x,
            |b, x| b.iter(|| net.forward(x).unwrap()),
        );
    }
    g.finish();
}

#[cfg(not(feature = "peer-bench"))]
fn peer(_: &mut Criterion) {}

criterion_group!(benches, forward, peer);
criterion_main!(benches);
