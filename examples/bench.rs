//! Latency of one model on this machine: eval-mode forward passes on random weights.
//!
//! ```text
//! cargo run --release --example bench -- --model tf_efficientnet_b0 --batch 16 --iters 20 --threads 2 --json
//! ```
//!
//! Prints the median and minimum time per batch (and, with `--json`, one object with `model`, `batch`,
//! `resolution`, `threads`, `dtype`, `median_ms`, `min_ms`, `peak_rss_mb`). Peak RSS is the process's
//! high-water mark (Linux `VmHWM`), so run one configuration per process to measure memory.
//!
//! `--per-block` also times every unit inside whole passes (stem, each block, head convolution, pool +
//! classifier; the fastest of `--iters` passes each): where the time goes on this machine. Without
//! micro-batching (the units see the whole batch), so use it at small batches.
//!
//! `--serve` keeps the model loaded for another program that interleaves it with a peer (see
//! `tools/bench_peers.py --interleave`): after the warm-up it prints `ready`, then for each line `K` read
//! from stdin runs K timed passes and prints `{"times_ms": [...]}`; at the end of its input it prints
//! `{"peak_rss_mb": ...}`.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use effnet::config::ModelConfig;

#[derive(Parser)]
#[command(about = "Forward-pass latency of an EfficientNet / MobileNetV2 model")]
struct Args {
    /// Model name (e.g. tf_efficientnet_b0, efficientnet_b0, mobilenetv2_100).
    #[arg(long, default_value = "tf_efficientnet_b0")]
    model: String,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Input resolution (default: the model's native one).
    #[arg(long)]
    resolution: Option<usize>,
    /// Timed iterations (after 3 warm-up passes).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Fold batch norms into the convolutions first (`Network::fuse`).
    #[arg(long)]
    fuse: bool,
    /// Run on the GPU (CUDA or Metal, when compiled with the feature).
    #[arg(long)]
    gpu: bool,
    /// Also time each unit (stem, blocks, head) inside whole passes.
    #[arg(long)]
    per_block: bool,
    #[arg(long)]
    json: bool,
    /// Run passes on request from stdin (a pass count per line), printing their times as JSON.
    #[arg(long, conflicts_with_all = ["per_block", "json"])]
    serve: bool,
}

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn device(gpu: bool) -> Result<Device> {
    if !gpu {
        return Ok(Device::Cpu);
    }
    if candle_core::utils::cuda_is_available() {
        return Ok(Device::new_cuda(0)?);
    }
    if candle_core::utils::metal_is_available() {
        return Ok(Device::new_metal(0)?);
    }
    bail!("--gpu: built without the `cuda` or `metal` feature, or no GPU present")
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(t) = args.threads {
        // candle sizes its thread pools from RAYON_NUM_THREADS; set it before the first tensor op.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => bail!("--dtype {other}: expected f32, f16 or bf16"),
    };
    let dev = device(args.gpu)?;
    let cfg = ModelConfig::from_name(&args.model)?;
    let res = args.resolution.unwrap_or(cfg.resolution());
    // Random weights as plain tensors (trainable Vars would record the autograd graph).
    let vm = VarMap::new();
    cfg.build(VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
    let tensors = vm
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("VarMap lock"))?
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().to_dtype(dtype)?)))
        .collect::<Result<_>>()?;
    drop(vm);
    let net = cfg.build(VarBuilder::from_tensors(tensors, dtype, &dev))?;
    let net = if args.fuse { net.fuse()? } else { net };
    let x = Tensor::randn(0f32, 1f32, (args.batch, 3, res, res), &dev)?.to_dtype(dtype)?;
    let sync = |t: &Tensor| -> Result<()> {
        // Reading one value forces the device to finish the work.
        t.flatten_all()?
            .get(0)?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        Ok(())
    };
    let timed = |passes: usize| -> Result<Vec<f64>> {
        (0..passes)
            .map(|_| {
                let t0 = Instant::now();
                sync(&net.forward_t(&x, false)?)?;
                Ok(t0.elapsed().as_secs_f64() * 1e3)
            })
            .collect()
    };
    timed(3)?;
    if args.serve {
        return serve(timed);
    }
    let mut times = timed(args.iters)?;
    times.sort_by(f64::total_cmp);
    let units = match args.per_block {
        true => per_block_times(&net, &x, args.iters, &sync)?,
        false => Vec::new(),
    };
    let median = times[times.len() / 2];
    let min = times[0];
    let threads = candle_core::utils::get_num_threads();
    if args.json {
        let mut obj = serde_json::json!({
            "model": args.model, "batch": args.batch, "resolution": res, "threads": threads,
            "dtype": args.dtype, "fused": args.fuse, "device": format!("{dev:?}"), "median_ms": median, "min_ms": min,
            "peak_rss_mb": peak_rss_mb(),
        });
        if args.per_block {
            obj["per_block_min_ms"] = units
                .iter()
                .map(|(unit, ms)| serde_json::json!({ "unit": unit, "min_ms": ms }))
                .collect();
        }
        println!("{obj}");
    } else {
        println!(
            "{} batch {} at {res}px, {threads} threads, {}: median {median:.2} ms, min {min:.2} ms per batch",
            args.model, args.batch, args.dtype
        );
        for (unit, ms) in &units {
            println!("  {unit:<40} {ms:8.3} ms");
        }
    }
    Ok(())
}

/// `--serve`: `ready`, then for each stdin line `K` the times of K passes, and the peak RSS at the end.
fn serve(timed: impl Fn(usize) -> Result<Vec<f64>>) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let passes: usize = match line.trim().parse() {
            Ok(k) => k,
            Err(_) => bail!("--serve: expected a pass count per line, got {line:?}"),
        };
        writeln!(out, "{}", serde_json::json!({ "times_ms": timed(passes)? }))?;
        out.flush()?;
    }
    writeln!(
        out,
        "{}",
        serde_json::json!({ "peak_rss_mb": peak_rss_mb() })
    )?;
    Ok(())
}

/// The fastest time of each unit over `iters` whole passes (stem, blocks, head convolution, pool +
/// classifier), each unit named with its shape.
fn per_block_times(
    net: &effnet::models::Network,
    x: &Tensor,
    iters: usize,
    sync: &dyn Fn(&Tensor) -> Result<()>,
) -> Result<Vec<(String, f64)>> {
    let mut names = vec!["stem".to_string()];
    names.extend(net.blocks().iter().map(|b| {
        let r = b.block();
        format!(
            "{} k{} s{} {}->{}->{}",
            r.name(),
            r.kernel,
            r.stride,
            r.in_channels,
            r.mid_channels,
            r.out_channels
        )
    }));
    names.extend(["head conv".to_string(), "pool + classifier".to_string()]);
    let mut best = vec![f64::MAX; names.len()];
    let timed = |i: usize, best: &mut Vec<f64>, f: &dyn Fn() -> Result<Tensor>| {
        let t0 = Instant::now();
        let y = f()?;
        sync(&y)?;
        best[i] = best[i].min(t0.elapsed().as_secs_f64() * 1e3);
        Ok::<_, anyhow::Error>(y)
    };
    for _ in 0..iters.max(1) {
        let mut h = timed(0, &mut best, &|| Ok(net.forward_stem_t(x, false)?))?;
        for (i, b) in net.blocks().iter().enumerate() {
            let input = h.clone();
            h = timed(i + 1, &mut best, &|| Ok(b.forward_t(&input, false)?))?;
        }
        let n = net.blocks().len();
        let f = timed(
            n + 1,
            &mut best,
            &|| Ok(net.forward_head_conv_t(&h, false)?),
        )?;
        timed(n + 2, &mut best, &|| Ok(net.forward_head(&f, false)?))?;
    }
    Ok(names.into_iter().zip(best).collect())
}
