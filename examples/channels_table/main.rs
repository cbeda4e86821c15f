//! The channel-mask results table of the README: EfficientNet-Lite0 on the bundled images,
//! keep 10 and 25, at `layer3` and `layer4`: the extremal set's hard-mask kept score against
//! the two baselines, and what each stage of the recipe buys (the paper's schedule, the soft
//! mask of the default recipe, the swap refinement).
//!
//! ```text
//! cargo run --release --example channels_table
//! ```

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use extremal::mask::channels::{ChannelSite, channel_masks_at};
use extremal::mask::{ChannelConfig, Schedule};
use extremal::models::{Model, ModelKind, load_input};

fn main() -> anyhow::Result<()> {
    // As the command-line tool runs: candle's element-wise operations on the calling thread,
    // the work on the pool's threads (`extremal::ops::on_thread_pool`) and the other threads
    // polling (`extremal::ops::polling`), so that the seconds are a `channels` command's. (The
    // tool's allocator is mimalloc; for the channel searches that measured the same as
    // glibc's malloc.)
    // SAFETY: first thing in main, before any other thread exists.
    unsafe { extremal::ops::one_elementwise_thread() };
    extremal::ops::on_thread_pool(|| extremal::ops::polling(table))
}

fn table() -> anyhow::Result<()> {
    let model = Model::load(ModelKind::EfficientnetLite0, None, DType::F32, &Device::Cpu)?;
    println!(
        "| image | layer | keep | original | top activation | activation×gradient | paper schedule | soft (default) | extremal (refined) | seconds |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for image in ["chelsea", "coffee"] {
        let x = load_input(
            Path::new(&format!("assets/{image}.png")),
            model.preprocess(),
            false,
            DType::F32,
            &Device::Cpu,
        )?;
        for layer in ["layer3", "layer4"] {
            let site = ChannelSite::new(&model, &x, layer, None)?;
            for keep in [10, 25] {
                let paper = channel_masks_at(
                    &site,
                    &ChannelConfig {
                        keep,
                        schedule: Schedule::Paper,
                        refine: false,
                        ..Default::default()
                    },
                    &mut |_, _| {},
                )?;
                let t = Instant::now();
                let r = channel_masks_at(
                    &site,
                    &ChannelConfig {
                        keep,
                        ..Default::default()
                    },
                    &mut |_, _| {},
                )?;
                let secs = t.elapsed().as_secs_f64();
                println!(
                    "| {image} | {layer} (`{}`) | {keep} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | **{:.3}** | {secs:.1} |",
                    r.site,
                    r.original_score,
                    r.baselines.top_activation,
                    r.baselines.activation_x_gradient,
                    paper.soft_kept_score,
                    r.soft_kept_score,
                    r.kept_score
                );
            }
        }
    }
    Ok(())
}
