//! `extremal invert`, and the inversion sheet of `extremal channels --render`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use extremal_hook::Network;
use extremal_invert::{invert, Inversion, InvertConfig, OptimiserKind, Parameterisation, Target};
use extremal_mask::ChannelReport;
use extremal_models::Model;
use serde_json::json;

use crate::args::{progress_bar, InputArgs, ModelArgs, OutputArgs};
use crate::outdir::OutDir;
use crate::render;

/// Settings of the inversion optimiser shared by `invert` and `channels --render`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct InvertOptions {
    /// Optimisation steps (default 400).
    #[arg(long)]
    iterations: Option<usize>,
    /// Seed of the random start and of the jitter: the same seed gives the same image.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Learning rate, relative to the scale of the random start (default 0.1).
    #[arg(long)]
    lr: Option<f64>,
    /// The optimiser (momentum: SGD with momentum 0.9 on unit-RMS gradients).
    #[arg(long, alias = "optimizer", value_enum, default_value_t = OptimiserKind::Adam)]
    optimiser: OptimiserKind,
    /// Weight of the total-variation prior (default: grows with the depth of the layer).
    #[arg(long)]
    tv_weight: Option<f64>,
    /// Weight of the α-norm prior (α = 6) (default 1e-3).
    #[arg(long)]
    alpha_weight: Option<f64>,
    /// Random shift of up to this many pixels each step (default 0).
    #[arg(long)]
    jitter: Option<usize>,
    /// Random scale change of up to this fraction each step, e.g. 0.05 (default 0).
    #[arg(long)]
    scale: Option<f64>,
    /// Random rotation of up to this many degrees each step (default 0).
    #[arg(long)]
    rotate: Option<f64>,
    /// Fraction of the steps during which a rectified site's ReLU/ReLU6 passes the gradients
    /// that would revive its dead units (default 0.3; 0 turns it off).
    #[arg(long)]
    redirect: Option<f64>,
    /// pixel or fourier (decorrelated colour, 1/f-scaled spectrum).
    #[arg(long, alias = "parametrization", value_enum, default_value_t = Parameterisation::Pixel)]
    parameterisation: Parameterisation,
    /// With --channels or --mask, what the channels outside the set are asked: free (only the
    /// set is matched), zero (the paper's masked activation: everything but the set, and the
    /// set where it does not fire, is matched to zero) or blank (as zero, with silence taken
    /// as the blank image's activation). Default free (zero for `channels --render`).
    #[arg(long, value_enum)]
    others: Option<extremal_invert::Others>,
}

impl InvertOptions {
    pub(crate) fn config(&self) -> Result<InvertConfig> {
        let d = InvertConfig::default();
        Ok(InvertConfig {
            iterations: self.iterations.unwrap_or(d.iterations),
            seed: self.seed,
            lr: self.lr.unwrap_or(d.lr),
            optimiser: self.optimiser,
            tv_weight: self.tv_weight.or(d.tv_weight),
            alpha_weight: self.alpha_weight.unwrap_or(d.alpha_weight),
            jitter: self.jitter.unwrap_or(d.jitter),
            scale: self.scale.unwrap_or(d.scale),
            rotate: self.rotate.unwrap_or(d.rotate),
            redirect_until: self.redirect.unwrap_or(d.redirect_until),
            parameterisation: self.parameterisation,
            others: self.others.unwrap_or(d.others),
            ..d
        })
    }
}

/// Feature inversion. `--out` writes inversion.png and inversion.safetensors (tensor `image`,
/// the normalised input).
#[derive(clap::Args)]
pub(crate) struct InvertArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: InputArgs,
    /// The site whose activation is inverted: a native name or an alias (`layer1`…`layer4`).
    #[arg(long)]
    layer: String,
    /// Keep only these channels of the activation, comma separated (default: all of them).
    #[arg(long, value_delimiter = ',', conflicts_with = "mask")]
    channels: Option<Vec<usize>>,
    /// Keep the kept set of a channels.json written by `extremal channels --out` (a hard mask).
    #[arg(long)]
    mask: Option<PathBuf>,
    /// With --mask: use its soft mask values instead of the hard kept set.
    #[arg(long, requires = "mask")]
    soft: bool,
    #[command(flatten)]
    options: InvertOptions,
    #[command(flatten)]
    output: OutputArgs,
}

/// The channels.json at `path`, checked against the site.
pub(crate) fn read_report(path: &Path, site: &str, channels: usize) -> Result<ChannelReport> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let report: ChannelReport = serde_json::from_slice(&bytes).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "is not JSON"
        } else {
            "is not a channels.json"
        };
        anyhow::anyhow!(
            "{} {what}: give the channels.json of `extremal channels --out` ({e})",
            path.display()
        )
    })?;
    report
        .check_site(site, channels)
        .with_context(|| format!("{}", path.display()))?;
    Ok(report)
}

/// The target of `--mask FILE [--soft]`, checked against the site.
fn mask_target(path: &Path, soft: bool, site: &str, channels: usize) -> Result<Target> {
    let report = read_report(path, site, channels)?;
    Ok(if soft {
        Target::Mask(report.mask.iter().map(|&m| m as f64).collect())
    } else {
        Target::Channels(report.kept().to_vec())
    })
}

/// Runs `targets` with a progress bar.
pub(crate) fn run_inversion(
    model: &Model,
    x: &Tensor,
    layer: &str,
    targets: &[Target],
    cfg: &InvertConfig,
) -> Result<Inversion> {
    let bar = progress_bar(cfg.iterations as u64, "invert", " {msg}");
    let inv = invert(model, x, layer, targets, cfg, &mut |t, errors| {
        bar.set_position(t as u64);
        if t % 10 == 0 {
            let worst = errors.iter().cloned().fold(0.0, f64::max);
            bar.set_message(format!("error {worst:.3}"));
        }
    });
    bar.finish_and_clear();
    Ok(inv?)
}

/// An inverted image `(3, H, W)` (normalised input space) as a picture.
pub(crate) fn picture(model: &Model, image: &Tensor) -> Result<image::RgbImage> {
    Ok(render::rgb_image(
        &model.preprocess().denormalise(&image.unsqueeze(0)?)?.squeeze(0)?,
    )?)
}

pub(crate) fn run(args: &InvertArgs) -> Result<()> {
    let mut out = args.output.out.as_deref().map(OutDir::prepare).transpose()?;
    let (model, x) = args.model.load_with_image(&args.input, "invert")?;
    let cfg = args.options.config()?;
    let site = model.resolve(&args.layer)?;
    let channels = model.forward_to(&x, &site)?.dim(1)?;
    let target = match (&args.channels, &args.mask) {
        (Some(set), _) => Target::Channels(set.clone()),
        (None, Some(path)) => mask_target(path, args.soft, &site, channels)?,
        (None, None) => Target::Full,
    };
    let kept: Option<Vec<usize>> = match &target {
        Target::Channels(set) => Some(set.clone()),
        _ => None,
    };
    let start = Instant::now();
    let inv = run_inversion(&model, &x, &args.layer, &[target], &cfg)?;
    let seconds = start.elapsed().as_secs_f64();
    let obj = json!({
        "model": model.name(),
        "layer": args.layer,
        "site": inv.site,
        "relative_error": inv.relative_errors[0],
        "iterations": cfg.iterations,
        "channels": kept,
        "soft": args.soft,
        "seed": cfg.seed,
        "tv_weight": inv.tv_weight,
        "seconds_per_iteration": seconds / cfg.iterations as f64,
    });
    if let Some(dir) = out.as_mut() {
        render::save_tensors_in(dir, &inv.images, "image", "inversion", args.output.npy)?;
        render::save_png(&picture(&model, &inv.images.squeeze(0)?)?, &dir.path("inversion.png"))?;
        dir.commit()?;
    }
    if args.output.json {
        crate::out(&format!("{obj}\n"));
    } else {
        crate::out(&format!(
            "{} at {}: relative feature error {:.4} after {} iterations ({:.3} s each)\n",
            model.name(),
            inv.site,
            inv.relative_errors[0],
            cfg.iterations,
            seconds / cfg.iterations as f64
        ));
    }
    Ok(())
}

/// An inverted image `(3, H, W)` as a picture with its contrast stretched: its deviation from
/// its mean colour scaled so that the 99th percentile of `|deviation|` spans 0.35 of the range
/// (a render that is faint where the set does not fire stays visible where it does).
pub(crate) fn stretched_picture(model: &Model, image: &Tensor) -> Result<image::RgbImage> {
    let rgb = model.preprocess().denormalise(&image.unsqueeze(0)?)?.squeeze(0)?;
    let mean = rgb.flatten_from(1)?.mean_keepdim(1)?.unsqueeze(2)?;
    let dev = rgb.broadcast_sub(&mean)?;
    let values: Vec<f32> = dev.abs()?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    let p99 = extremal_render::percentile(&values, 99.0).max(1e-6);
    let shown = ((dev * (0.35 / p99 as f64))? + 0.5)?;
    Ok(render::rgb_image(&shown)?)
}

/// What `channels --render` inverted: the relative feature errors, and the pictures of the
/// top kept channels inverted one by one.
pub(crate) struct Rendered {
    pub(crate) errors: Vec<f64>,
    pub(crate) singles: Vec<(usize, image::RgbImage)>,
}

/// `channels --render`: the image, the inversions of the full activation, of the kept channels
/// and of the top channels one by one, labelled, in one sheet.
pub(crate) fn render_sheet(
    model: &Model,
    x: &Tensor,
    layer: &str,
    report: &ChannelReport,
    cfg: &InvertConfig,
    path: &Path,
) -> Result<Rendered> {
    let (ranking, keep) = (&report.ranking, report.keep);
    // A channel that is zero everywhere on this image has nothing to invert: leave it out.
    let phi = model.forward_to(x, layer)?.detach();
    let energy: Vec<f64> = phi
        .sqr()?
        .flatten_from(2)?
        .sum(candle_core::D::Minus1)?
        .squeeze(0)?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()?;
    let singles: Vec<usize> = ranking
        .iter()
        .take(keep.min(6))
        .cloned()
        .filter(|&k| energy[k] > 0.0)
        .collect();
    // The whole layer is inverted as `extremal invert` does; the sets with `cfg`.
    let full = run_inversion(
        model,
        x,
        layer,
        &[Target::Full],
        &InvertConfig {
            seed: cfg.seed,
            ..InvertConfig::default()
        },
    )?;
    let mut targets = vec![Target::Channels(ranking[..keep].to_vec())];
    targets.extend(singles.iter().map(|&k| Target::Channels(vec![k])));
    let sets = run_inversion(model, x, layer, &targets, cfg)?;
    let images = Tensor::cat(&[&full.images, &sets.images], 0)?;
    let errors: Vec<f64> = full
        .relative_errors
        .iter()
        .chain(&sets.relative_errors)
        .copied()
        .collect();
    let inv = Inversion {
        images,
        relative_errors: errors,
        ..sets
    };
    let rgb = model.preprocess().denormalise(x)?.squeeze(0)?;
    let mut tiles = vec![(render::rgb_image(&rgb)?, "image".to_string())];
    tiles.push((picture(model, &inv.images.get(0)?)?, format!("all {}", phi.dim(1)?)));
    tiles.push((stretched_picture(model, &inv.images.get(1)?)?, format!("kept {keep}")));
    let mut pictures = Vec::new();
    for (i, &k) in singles.iter().enumerate() {
        let p = stretched_picture(model, &inv.images.get(2 + i)?)?;
        tiles.push((p.clone(), format!("ch {k} {:+.2}", report.contributions[k])));
        pictures.push((k, p));
    }
    render::save_png(&render::sheet(&tiles, 4), path)?;
    Ok(Rendered {
        errors: inv.relative_errors,
        singles: pictures,
    })
}
