//! Parameter and multiply-accumulate counts.
//!
//! ```text
//! cargo run --release --example flops                       # every standard model + the comparison
//! cargo run --release --example flops -- --model b3 --resolution 300
//! cargo run --release --example flops -- --json             # one JSON object per line
//! ```
//!
//! The comparison of EfficientNet-B0 and MobileNetV2 is printed at the SAME resolutions (160 and 224): a
//! well-known reproduction compared B0 at one size with MobileNetV2 at another and drew the wrong
//! conclusion about their cost.

use anyhow::Result;
use clap::Parser;
use effnet::config::{Counts, ModelConfig};

#[derive(Parser)]
#[command(about = "Exact parameter and MAC counts of EfficientNet / MobileNetV2 models")]
struct Args {
    /// Model name (e.g. b0, tf_efficientnet_b3, efficientnet_lite0, mobilenetv2_100). Repeatable.
    /// Default: every standard model plus the B0 vs MobileNetV2 comparison.
    #[arg(long)]
    model: Vec<String>,
    /// Square input resolution (default: each model's native one).
    #[arg(long)]
    resolution: Option<usize>,
    /// Print one JSON object per line: {"model", "resolution", "params", "macs"}.
    #[arg(long)]
    json: bool,
}

fn row(name: &str, resolution: Option<usize>) -> Result<(String, usize, Counts)> {
    let cfg = ModelConfig::from_name(name)?;
    let r = resolution.unwrap_or(cfg.resolution());
    Ok((name.to_string(), r, Counts::of(&cfg.resolve()?, r, r)))
}

fn print(rows: &[(String, usize, Counts)], json: bool) {
    for (name, r, c) in rows {
        if json {
            let obj = serde_json::json!({"model": name, "resolution": r, "params": c.params, "macs": c.macs});
            println!("{obj}");
        } else {
            println!(
                "{name:<22} {r:>5} {:>14} {:>10.3}M {:>10.3}G",
                c.params,
                c.params as f64 / 1e6,
                c.macs as f64 / 1e9
            );
        }
    }
}

fn header(title: &str, json: bool) {
    if !json {
        println!("\n{title}");
        println!(
            "{:<22} {:>5} {:>14} {:>11} {:>11}",
            "model", "res", "params", "params", "MACs"
        );
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !args.model.is_empty() {
        let rows = args
            .model
            .iter()
            .map(|m| row(m, args.resolution))
            .collect::<Result<Vec<_>>>()?;
        header("", args.json);
        print(&rows, args.json);
        return Ok(());
    }
    let standard = [
        "b0",
        "b1",
        "b2",
        "b3",
        "b4",
        "b5",
        "b6",
        "b7",
        "b8",
        "l2",
        "lite0",
        "lite1",
        "lite2",
        "lite3",
        "lite4",
        "mobilenetv2_035",
        "mobilenetv2_050",
        "mobilenetv2_075",
        "mobilenetv2_100",
        "mobilenetv2_130",
        "mobilenetv2_140",
    ];
    let rows = standard
        .iter()
        .map(|m| row(m, args.resolution))
        .collect::<Result<Vec<_>>>()?;
    header("Native resolution", args.json);
    print(&rows, args.json);
    header(
        "EfficientNet-B0 vs MobileNetV2 at the same resolution",
        args.json,
    );
    for r in [160, 224] {
        let rows = vec![row("b0", Some(r))?, row("mobilenetv2_100", Some(r))?];
        print(&rows, args.json);
        if !args.json {
            println!(
                "  at {r}px B0 costs {:.2}x the MACs and {:.2}x the parameters of MobileNetV2",
                rows[0].2.macs as f64 / rows[1].2.macs as f64,
                rows[0].2.params as f64 / rows[1].2.params as f64
            );
        }
    }
    Ok(())
}
