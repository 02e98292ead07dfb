//! With the `cuda` feature, compiles `src/ops/cuda/kernels.cu` to PTX with `nvcc` (found as `$NVCC`,
//! `$CUDA_HOME/bin/nvcc` or `nvcc` on the PATH) for compute capability `$CUDA_COMPUTE_CAP` (else the
//! first GPU's, from `nvidia-smi`), as candle does for its own kernels. Without it, does nothing.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "src/ops/cuda/kernels.cu";

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    println!("cargo::rerun-if-changed={SOURCE}");
    if let Err(e) = compile() {
        eprintln!("effnet: building the CUDA kernels failed: {e}");
        std::process::exit(1);
    }
}

fn compile() -> Result<(), String> {
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?)
        .join("effnet_kernels.ptx");
    let cap = compute_cap()?;
    let nvcc = env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin").join("nvcc")))
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .arg(SOURCE)
        .arg("-o")
        .arg(&out)
        .status()
        .map_err(|e| {
            format!(
                "could not run {} ({e}); install the CUDA toolkit or set NVCC",
                nvcc.display()
            )
        })?;
    if !status.success() {
        return Err(format!("{} failed on {SOURCE} ({status})", nvcc.display()));
    }
    Ok(())
}

/// `CUDA_COMPUTE_CAP` (e.g. `90`), else the first GPU's compute capability from `nvidia-smi`.
fn compute_cap() -> Result<String, String> {
    if let Ok(cap) = env::var("CUDA_COMPUTE_CAP") {
        return Ok(cap.trim().replace('.', ""));
    }
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .map_err(|e| format!("CUDA_COMPUTE_CAP is not set and nvidia-smi could not run ({e})"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().next().map(str::trim) {
        Some(cap) if out.status.success() && !cap.is_empty() => Ok(cap.replace('.', "")),
        _ => Err("CUDA_COMPUTE_CAP is not set and nvidia-smi found no GPU".into()),
    }
}
