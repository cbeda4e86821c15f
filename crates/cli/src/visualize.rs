//! `extremal visualize`: feature visualization of channels, neurons or a direction.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use extremal_hook::Network;
use extremal_invert::{
    visualize, Objective, ObjectiveKind, Parameterisation, Robustness, Visualization, VisualizeConfig,
};
use extremal_models::Model;
use serde_json::json;

use crate::args::{progress_bar, ModelArgs, OutputArgs};
use crate::outdir::OutDir;
use crate::render;

/// Settings of a feature visualization shared by `visualize` and `channels --visualize`.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct VisualizeOptions {
    /// Image side in pixels (the optimised image; the model sees it as it is).
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Optimisation steps (Adam).
    #[arg(long, default_value_t = 512)]
    iterations: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Weight of the diversity term across the batch (Lucid's; e.g. 100), 0 for none.
    #[arg(long, default_value_t = 0.0)]
    diversity: f64,
    /// fourier (Lucid's default: decorrelated colour, 1/f spectrum) or pixel.
    #[arg(long, alias = "parametrization", value_enum, default_value_t = Parameterisation::Fourier)]
    parameterisation: Parameterisation,
    /// Turn off the random pad, moves, scale and rotation of each step.
    #[arg(long)]
    no_transforms: bool,
    /// Seed of the random start and of the transforms.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl VisualizeOptions {
    /// The library configuration for `model`'s input normalisation.
    pub(crate) fn config(&self, model: &Model) -> VisualizeConfig {
        let pre = model.preprocess();
        VisualizeConfig {
            iterations: self.iterations,
            lr: self.lr,
            size: (self.size, self.size),
            parameterisation: self.parameterisation,
            robustness: if self.no_transforms {
                Robustness::none()
            } else {
                Robustness::default()
            },
            diversity: self.diversity,
            mean: pre.mean.map(f64::from),
            std: pre.std.map(f64::from),
            seed: self.seed,
        }
    }
}

/// Feature visualization: images optimised from noise to excite channels (or a neuron, or a
/// direction) at a layer. `--out` writes visualization-<k>.png per objective (the optimised
/// image itself), visualizations.png (a labelled sheet) and visualization.json.
#[derive(clap::Args)]
pub(crate) struct VisualizeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The site: a native name or an alias (`layer1`…`layer4`).
    #[arg(long)]
    layer: String,
    /// The channels to visualize, comma separated (one image each, optimised as one batch).
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["mask", "direction"])]
    channel: Option<Vec<usize>>,
    /// The kept channels of a channels.json written by `extremal channels --out`.
    #[arg(long, conflicts_with = "channel")]
    mask: Option<PathBuf>,
    /// A direction in channel space: a JSON array, a .npy or a .safetensors of one value per
    /// channel.
    #[arg(long, conflicts_with_all = ["channel", "mask"])]
    direction: Option<PathBuf>,
    /// channel (mean over positions), neuron (the centre position) or direction.
    #[arg(long, value_enum)]
    objective: Option<ObjectiveKind>,
    #[command(flatten)]
    options: VisualizeOptions,
    #[command(flatten)]
    output: OutputArgs,
}

/// A direction file: a JSON array of numbers, or one tensor in a .npy or .safetensors file.
fn read_direction(path: &Path) -> Result<Vec<f64>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let bad = |what: &str| {
        anyhow::anyhow!(
            "{}: {what}; give a JSON array, a .npy or a .safetensors of one value per channel",
            path.display()
        )
    };
    let values = match ext.as_str() {
        "npy" => Tensor::read_npy(path).map_err(|e| bad(&format!("not a .npy file ({e})")))?,
        "safetensors" => {
            let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
                .map_err(|e| bad(&format!("not a safetensors file ({e})")))?;
            if tensors.len() != 1 {
                return Err(bad(&format!("it holds {} tensors, not one", tensors.len())));
            }
            let one: Tensor = tensors.into_values().next().expect("one tensor");
            one
        }
        _ => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let v: Vec<f64> =
                serde_json::from_str(&text).map_err(|e| bad(&format!("not a JSON array of numbers ({e})")))?;
            return Ok(v);
        }
    };
    Ok(values
        .flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?)
}

/// Runs `objectives` with a progress bar.
pub(crate) fn run_visualization(
    model: &Model,
    layer: &str,
    objectives: &[Objective],
    cfg: &VisualizeConfig,
) -> Result<Visualization> {
    let bar = progress_bar(cfg.iterations as u64, "visualize", " {msg}");
    let vis = visualize(
        model,
        layer,
        objectives,
        cfg,
        model.dtype(),
        model.device(),
        &mut |t, values| {
            bar.set_position(t as u64);
            if t % 10 == 0 {
                let mean = values.iter().sum::<f64>() / values.len() as f64;
                bar.set_message(format!("objective {mean:.3}"));
            }
        },
    );
    bar.finish_and_clear();
    Ok(vis?)
}

pub(crate) fn run(args: &VisualizeArgs) -> Result<()> {
    let mut out = args.output.out.as_deref().map(OutDir::prepare).transpose()?;
    if let Some(p) = args.mask.as_ref().or(args.direction.as_ref()) {
        if !p.is_file() {
            bail!("{}: no such file", p.display());
        }
    }
    let model = args.model.load()?;
    let cfg = args.options.config(&model);
    let site = model.resolve(&args.layer)?;
    let kind = args.objective.unwrap_or(if args.direction.is_some() {
        ObjectiveKind::Direction
    } else {
        ObjectiveKind::Channel
    });
    let objectives: Vec<Objective> = match (&args.direction, kind) {
        (Some(path), ObjectiveKind::Direction) => vec![Objective::Direction(read_direction(path)?)],
        (Some(_), other) => bail!("--direction takes --objective direction, not {other:?}"),
        (None, ObjectiveKind::Direction) => bail!("--objective direction needs --direction FILE"),
        (None, kind) => {
            let channels = match (&args.channel, &args.mask) {
                (Some(set), _) => set.clone(),
                (None, Some(path)) => {
                    let size = model.preprocess().size;
                    let x = Tensor::zeros((1, 3, size, size), model.dtype(), model.device())?;
                    let c = model.forward_to(&x, &site)?.dim(1)?;
                    crate::invert::read_report(path, &site, c)?.kept().to_vec()
                }
                (None, None) => bail!("give --channel K[,K…], --mask channels.json or --direction FILE"),
            };
            channels
                .into_iter()
                .map(|k| match kind {
                    ObjectiveKind::Neuron => Objective::Neuron(k),
                    _ => Objective::Channel(k),
                })
                .collect()
        }
    };
    let start = Instant::now();
    let vis = run_visualization(&model, &args.layer, &objectives, &cfg)?;
    let seconds = start.elapsed().as_secs_f64();
    let items: Vec<_> = objectives
        .iter()
        .enumerate()
        .map(|(i, o)| {
            json!({
                "objective": o.label(),
                "channel": o.channel(),
                "file": format!("visualization-{}.png", file_label(o)),
                "value": vis.objective[i],
                "peak": vis.peak[i],
            })
        })
        .collect();
    let obj = json!({
        "model": model.name(),
        "layer": args.layer,
        "site": vis.site,
        "size": [cfg.size.0, cfg.size.1],
        "iterations": cfg.iterations,
        "seed": cfg.seed,
        "diversity": cfg.diversity,
        "visualizations": items,
        "seconds": seconds,
    });
    if let Some(dir) = out.as_mut() {
        let mut tiles = Vec::new();
        for (i, o) in objectives.iter().enumerate() {
            let img = render::rgb_image(&vis.images.get(i)?)?;
            render::save_png(&img, &dir.path(&format!("visualization-{}.png", file_label(o))))?;
            tiles.push((img, format!("{} {:.2}", o.label(), vis.objective[i])));
        }
        render::save_png(&render::sheet(&tiles, 4), &dir.path("visualizations.png"))?;
        render::write_json(&dir.path("visualization.json"), &obj)?;
        dir.commit()?;
    }
    if args.output.json {
        crate::out(&format!("{obj}\n"));
    } else {
        let mut text = format!(
            "{} at {}: {} visualization(s), {} iterations, {:.1} s\n",
            model.name(),
            vis.site,
            objectives.len(),
            cfg.iterations,
            seconds
        );
        for (i, o) in objectives.iter().enumerate() {
            let peak = vis.peak[i].map(|p| format!("  peak {p:.3}")).unwrap_or_default();
            text.push_str(&format!(
                "  {:<12} objective {:.3}{peak}\n",
                o.label(),
                vis.objective[i]
            ));
        }
        crate::out(&text);
    }
    Ok(())
}

/// The part of a visualization's file name that says what it shows: the channel, or
/// `direction`.
fn file_label(o: &Objective) -> String {
    match o {
        Objective::Channel(k) => k.to_string(),
        Objective::Neuron(k) => format!("neuron-{k}"),
        Objective::Direction(_) => "direction".into(),
    }
}
