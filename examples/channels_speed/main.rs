//! Times `channels` on one site with the model already loaded (the same work
//! `scripts/channels_speed.py` times in PyTorch: from the input tensor to the kept channels),
//! and with `--greedy` greedy forward selection too, the baseline the search must beat.
//!
//! ```text
//! cargo run --release --example channels_speed -- MODEL WEIGHTS|- INPUT LAYER KEEP [--greedy]
//! ```
//!
//! `WEIGHTS` `-` takes the model's own pretrained weights; `INPUT` is an image or a
//! `.safetensors` input. Prints one JSON object.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use extremal::mask::{ChannelConfig, ChannelSite, channel_masks_at, greedy_selection};
use extremal::models::{Model, load_input};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if !(6..=7).contains(&a.len()) {
        anyhow::bail!("usage: channels_speed MODEL WEIGHTS|- INPUT LAYER KEEP [--greedy]");
    }
    let weights = (a[2] != "-").then(|| Path::new(&a[2]));
    let model = Model::load(a[1].parse()?, weights, DType::F32, &Device::Cpu)?;
    let x = load_input(Path::new(&a[3]), model.preprocess(), false, DType::F32, &Device::Cpu)?;
    let mut cfg = ChannelConfig {
        keep: a[5].parse()?,
        ..Default::default()
    };
    if let Ok(n) = std::env::var("ITERATIONS") {
        cfg.iterations = Some(n.parse()?);
    }
    let t = Instant::now();
    let site = ChannelSite::new(&model, &x, &a[4], None)?;
    let r = channel_masks_at(&site, &cfg, &mut |_, _| {})?;
    let secs = t.elapsed().as_secs_f64();
    let mut out = serde_json::json!({
        "seconds": secs,
        "kept_score": r.kept_score,
        "original_score": r.original_score,
        "swaps": r.swaps,
        "timings": r.timings,
    });
    if a.get(6).map(String::as_str) == Some("--greedy") {
        let t = Instant::now();
        let (_, score) = greedy_selection(&site, cfg.keep, cfg.batch)?;
        out["greedy_score"] = score.into();
        out["greedy_seconds"] = t.elapsed().as_secs_f64().into();
    }
    println!("{out}");
    Ok(())
}
