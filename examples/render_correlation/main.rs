//! Do channel renders show where the channel fires? For the top kept channels of
//! EfficientNet-Lite0 `layer3` (keep 10) on each bundled image, each channel is inverted alone
//! twice — with the settings `channels --render` used before (`InvertConfig::default()`: the
//! other channels free, a start at the natural-image norm) and with today's
//! (`InvertConfig::channel_render()`: everything but the channel where it fires matched to
//! zero, the visualization's Fourier image with its random shift and an energy prior, a start
//! at 0.3 of that norm) — and the Pearson correlation between the render's local
//! energy and the channel's activation is printed (`invert::energy_correlation`).
//!
//! ```text
//! cargo run --release --example render_correlation [-- --iterations N] [--out DIR] [--parameterisation fourier]
//!     [--lr R] [--init-scale S] [--tv W] [--jitter PX] [--scale F] [--rotate DEG] [--now-only]
//!     [--optimiser adam|momentum] [--redirect-until F] [--alpha A] [--alpha-weight W]
//!     [--lr-decay D] [--others zero|blank|free]
//! ```

use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Device};
use extremal::hook::Network;
use extremal::invert::{InvertConfig, Target, energy_correlation, invert};
use extremal::mask::{ChannelConfig, channel_masks};
use extremal::models::{Model, ModelKind, load_input};

/// The value after `name` on the command line, parsed; `None` when the flag is absent.
fn flag<T: FromStr>(args: &[String], name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    let v = args.get(i + 1).ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?;
    Ok(Some(v.parse()?))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let iterations: Option<usize> = flag(&args, "--iterations")?;
    let now_only = args.iter().any(|a| a == "--now-only");
    let out: Option<PathBuf> = flag(&args, "--out")?;
    let model = Model::load(ModelKind::EfficientnetLite0, None, DType::F32, &Device::Cpu)?;
    let layer = "layer3";
    let site = model.resolve(layer)?;
    // Each with its own number of steps unless --iterations sets both.
    let before = InvertConfig::default();
    let before = InvertConfig {
        iterations: iterations.unwrap_or(before.iterations),
        ..before
    };
    let now = InvertConfig::channel_render();
    let now = InvertConfig {
        iterations: iterations.unwrap_or(now.iterations),
        parameterisation: flag(&args, "--parameterisation")?.unwrap_or(now.parameterisation),
        lr: flag(&args, "--lr")?.unwrap_or(now.lr),
        others: flag(&args, "--others")?.unwrap_or(now.others),
        lr_decay: flag(&args, "--lr-decay")?.unwrap_or(now.lr_decay),
        tv_weight: flag(&args, "--tv")?.or(now.tv_weight),
        init_scale: flag(&args, "--init-scale")?.unwrap_or(now.init_scale),
        jitter: flag(&args, "--jitter")?.unwrap_or(now.jitter),
        scale: flag(&args, "--scale")?.unwrap_or(now.scale),
        rotate: flag(&args, "--rotate")?.unwrap_or(now.rotate),
        optimiser: flag(&args, "--optimiser")?.unwrap_or(now.optimiser),
        redirect_until: flag(&args, "--redirect-until")?.unwrap_or(now.redirect_until),
        alpha: flag(&args, "--alpha")?.unwrap_or(now.alpha),
        alpha_weight: flag(&args, "--alpha-weight")?.unwrap_or(now.alpha_weight),
        ..now
    };
    println!(
        "Lite0 {layer}, top 6 kept channels of keep 10; before: {} iterations, now: {}",
        before.iterations, now.iterations
    );
    println!("| image | channel | correlation before (others free) | now (channel_render) |");
    println!("|---|---|---|---|");
    let (mut sum_before, mut sum_now, mut n) = (0.0, 0.0, 0);
    for name in ["chelsea", "coffee"] {
        let path = format!("assets/{name}.png");
        let x = load_input(Path::new(&path), model.preprocess(), false, DType::F32, &Device::Cpu)?;
        let cfg = ChannelConfig {
            keep: 10,
            ..Default::default()
        };
        let report = channel_masks(&model, &x, layer, &cfg)?;
        let phi = model.forward_to(&x, &site)?.squeeze(0)?;
        let (_, h, _) = phi.dims3()?;
        let stride = x.dim(2)? / h;
        let singles: Vec<usize> = report
            .kept()
            .iter()
            .copied()
            .filter(|&k| {
                phi.get(k)
                    .and_then(|t| t.abs()?.sum_all()?.to_scalar::<f32>())
                    .unwrap_or(0.0)
                    > 0.0
            })
            .take(6)
            .collect();
        let targets: Vec<Target> = singles.iter().map(|&k| Target::Channels(vec![k])).collect();
        let a = if now_only {
            None
        } else {
            Some(invert(&model, &x, layer, &targets, &before, &mut |_, _| {})?)
        };
        let b = invert(&model, &x, layer, &targets, &now, &mut |_, _| {})?;
        for (i, &k) in singles.iter().enumerate() {
            let act = phi.get(k)?;
            let ca = match &a {
                Some(a) => energy_correlation(&a.images.get(i)?, &act, stride)?,
                None => f64::NAN,
            };
            let cb = energy_correlation(&b.images.get(i)?, &act, stride)?;
            println!("| {name} | {k} | {ca:.3} | {cb:.3} |");
            sum_before += ca;
            sum_now += cb;
            n += 1;
        }
        if let Some(dir) = &out {
            std::fs::create_dir_all(dir)?;
            for (tag, inv) in [("before", a.as_ref()), ("now", Some(&b))] {
                let Some(inv) = inv else { continue };
                for (i, &k) in singles.iter().enumerate() {
                    let rgb = model
                        .preprocess()
                        .denormalise(&inv.images.get(i)?.unsqueeze(0)?)?
                        .squeeze(0)?;
                    extremal::render::rgb_image(&rgb)?.save(dir.join(format!("{name}-{k}-{tag}.png")))?;
                }
            }
        }
    }
    let (mb, mn) = (sum_before / n as f64, sum_now / n as f64);
    if now_only {
        println!("mean correlation: now {mn:.3}");
    } else {
        println!("mean correlation: before {mb:.3}, now {mn:.3} ({:.2}×)", mn / mb);
    }
    Ok(())
}
