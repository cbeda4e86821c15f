//! Times `channels` on one site with the model already loaded (the same work
//! `scripts/channels_speed.py` times in PyTorch: from the input tensor to the kept channels).
//!
//! ```text
//! cargo run --release --example channels_speed -- resnet50 WEIGHTS.safetensors INPUT.safetensors layer4 25
//! ```

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use extremal::mask::{ChannelConfig, channel_masks};
use extremal::models::{Model, load_input};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 6 {
        anyhow::bail!("usage: channels_speed MODEL WEIGHTS INPUT LAYER KEEP");
    }
    let model = Model::load(a[1].parse()?, Some(Path::new(&a[2])), DType::F32, &Device::Cpu)?;
    let x = load_input(Path::new(&a[3]), model.preprocess(), false, DType::F32, &Device::Cpu)?;
    let mut cfg = ChannelConfig {
        keep: a[5].parse()?,
        ..Default::default()
    };
    if let Ok(n) = std::env::var("ITERATIONS") {
        cfg.iterations = Some(n.parse()?);
    }
    let t = Instant::now();
    let r = channel_masks(&model, &x, &a[4], &cfg)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"seconds\": {secs:.4}, \"kept_score\": {}, \"original_score\": {}, \"swaps\": {}}}",
        r.kept_score, r.original_score, r.swaps
    );
    Ok(())
}
