//! Writes a zoo model's seeded random weights (PyTorch names, f32) and a seeded random input
//! to one safetensors file, for `scripts/golden.py` to run the same network in PyTorch.
//!
//! ```text
//! cargo run --release --example random_weights -- resnet50 7 224 224 target/golden/resnet50.safetensors
//! ```

use candle_core::{DType, Device};
use extremal::models::{Model, ModelKind};
use extremal::ops::random::SeededRng;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        anyhow::bail!("usage: random_weights MODEL SEED HEIGHT WIDTH OUT.safetensors");
    }
    let kind: ModelKind = args[1].parse()?;
    let seed: u64 = args[2].parse()?;
    let (h, w): (usize, usize) = (args[3].parse()?, args[4].parse()?);
    let (_, mut weights) = Model::random(kind, seed, DType::F32, &Device::Cpu)?;
    let input = SeededRng::new(seed + 1).normal_tensor(&[1, 3, h, w], 1.0, &Device::Cpu)?;
    weights.insert("__input__", input.to_dtype(DType::F32)?);
    let out = std::path::Path::new(&args[5]);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    weights.save(out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
