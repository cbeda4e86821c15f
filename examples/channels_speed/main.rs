//! Times `channels` on one site with the model already loaded (the same work
//! `scripts/channels_speed.py` times in PyTorch: from the input tensor to the kept channels),
//! and with `--greedy` greedy forward selection too, the baseline the search must beat. With
//! `--local-check`, every single swap of the found set (one kept channel out, one other in) is
//! scored, and the number that would raise the kept score is printed: 0 means the set is a
//! local optimum of the whole swap neighbourhood, not only of the refinement's 8 × 8 window.
//!
//! ```text
//! cargo run --release --example channels_speed -- MODEL WEIGHTS|- INPUT LAYER KEEP [--greedy] [--local-check]
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
    if a.len() < 6 || a[6..].iter().any(|f| f != "--greedy" && f != "--local-check") {
        anyhow::bail!("usage: channels_speed MODEL WEIGHTS|- INPUT LAYER KEEP [--greedy] [--local-check]");
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
    if a[6..].iter().any(|f| f == "--local-check") {
        let kept = r.kept();
        let others: Vec<usize> = (0..site.channels).filter(|c| !kept.contains(c)).collect();
        let swaps: Vec<Vec<usize>> = kept
            .iter()
            .flat_map(|&o| {
                others.iter().map(move |&i| {
                    let mut s: Vec<usize> = kept.iter().copied().filter(|&k| k != o).collect();
                    s.push(i);
                    s
                })
            })
            .collect();
        let scores = site.hard_scores(&swaps, true, cfg.batch)?;
        let better = scores.iter().filter(|&&s| s > r.kept_score).count();
        let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        out["swaps_scored"] = swaps.len().into();
        out["swaps_improving"] = better.into();
        out["best_swap_score"] = best.into();
    }
    if a[6..].iter().any(|f| f == "--greedy") {
        let t = Instant::now();
        let (_, score) = greedy_selection(&site, cfg.keep, cfg.batch)?;
        out["greedy_score"] = score.into();
        out["greedy_seconds"] = t.elapsed().as_secs_f64().into();
    }
    println!("{out}");
    Ok(())
}
