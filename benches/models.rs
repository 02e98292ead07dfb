//! Forward-pass latency of whole models (eval mode, plain tensors, random weights).
//!
//! `cargo bench --bench models` (add `-- b0` to filter). Threads: candle uses all cores unless
//! `RAYON_NUM_THREADS` says otherwise.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use effnet::config::ModelConfig;
use effnet::Network;

/// Random (He-initialised) weights as plain tensors: trainable `Var`s would record the graph.
fn build(name: &str) -> Network {
    let cfg = ModelConfig::from_name(name).unwrap();
    let vm = VarMap::new();
    cfg.build(VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))
        .unwrap();
    let tensors = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    cfg.build(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu))
        .unwrap()
}

fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward_f32");
    g.sample_size(10);
    for (name, res) in [
        ("tf_efficientnet_b0", 224),
        ("efficientnet_b0", 224),
        ("mobilenetv2_100", 224),
        ("tf_efficientnet_b3", 300),
    ] {
        let net = build(name);
        for batch in [1usize, 16] {
            let x = Tensor::randn(0f32, 1f32, (batch, 3, res, res), &Device::Cpu).unwrap();
            g.bench_with_input(BenchmarkId::new(name, batch), &x, |b, x| {
                b.iter(|| net.forward_t(x, false).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
