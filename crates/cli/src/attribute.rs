//! `extremal attribute`: image-space extremal perturbation (TorchRay's method).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use extremal_attr::Method;
use extremal_hook::Network;
use extremal_mask::{extremal_perturbation, reward, ExtremalConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::outdir::OutDir;
use crate::{render, ModelArgs};
use extremal_models::Preprocess;

#[derive(clap::Args)]
pub(crate) struct AttributeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// An image file or a .safetensors file whose tensor `input` is used as is.
    input: PathBuf,
    /// Target class (default: the top-1 class).
    #[arg(long)]
    target: Option<usize>,
    #[command(flatten)]
    pub(crate) method: MethodArgs,
    /// Target areas, fractions of the image, comma separated: one mask each, in one batch.
    #[arg(long, value_delimiter = ',', default_value = "0.1")]
    areas: Vec<f64>,
    /// Iterations.
    #[arg(long, default_value_t = 800)]
    iterations: usize,
    /// preserve, delete or dual.
    #[arg(long, default_value = "preserve")]
    game: String,
    /// simple or contrastive.
    #[arg(long, default_value = "simple")]
    reward: String,
    /// blur or fade.
    #[arg(long, default_value = "blur")]
    perturbation: String,
    /// Blur the final masks with σ = S·min(H, W) (0: off).
    #[arg(long, default_value_t = 0.0)]
    smooth: f64,
    /// Resize the shorter side to the model's input size instead of the whole image to a square.
    #[arg(long)]
    keep_aspect: bool,
    /// Write masks.safetensors, saliency.safetensors, masked-<area>.png, overlay-<area>.png and
    /// report.json here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// The attribution method and its options (shared by `attribute` and `evaluate`).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct MethodArgs {
    /// extremal (the default), gradient, deconvnet, guided-backprop, grad-cam, linear-approx,
    /// excitation-backprop, contrastive-excitation-backprop, rise, occlusion or
    /// integrated-gradients.
    #[arg(long, default_value = "extremal")]
    pub(crate) method: String,
    #[command(flatten)]
    pub(crate) options: MethodOptions,
}

/// The methods' own options (shared by `attribute`, `evaluate` and `compare`).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct MethodOptions {
    /// The saliency site (a name or an alias) of grad-cam and linear-approx (default `layer4`)
    /// and of the excitation backprops (default `layer3`), TorchRay's benchmark settings.
    #[arg(long)]
    pub(crate) layer: Option<String>,
    /// RISE: number of masks.
    #[arg(long, default_value_t = 8000)]
    rise_masks: usize,
    /// RISE: grid cells per side.
    #[arg(long, default_value_t = 7)]
    rise_cells: usize,
    /// RISE: probability that a cell is kept.
    #[arg(long, default_value_t = 0.5)]
    rise_p: f64,
    /// RISE: seed of the masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Occlusion: patch side in pixels.
    #[arg(long, default_value_t = 16)]
    occlusion_window: usize,
    /// Occlusion: step between patches.
    #[arg(long, default_value_t = 8)]
    occlusion_stride: usize,
    /// Integrated gradients: quadrature points.
    #[arg(long, default_value_t = 50)]
    ig_steps: usize,
    /// Integrated gradients: the baseline: zero (the network's input space, Captum's
    /// default), black, blur (σ 10 px) or a .safetensors file whose tensor `baseline` has the
    /// input's shape.
    #[arg(long, default_value = "zero")]
    ig_baseline: String,
}

/// The baseline named `name` (None for extremal perturbation).
pub(crate) fn baseline(name: &str, args: &MethodOptions, pre: &Preprocess) -> Result<Option<Box<dyn Method>>> {
    use extremal_attr::*;
    let layer = |default: &str| args.layer.clone().unwrap_or_else(|| default.to_string());
    Ok(Some(match name {
        "extremal" => return Ok(None),
        "gradient" => Box::new(Gradient::default()),
        "deconvnet" => Box::new(Gradient::deconvnet()),
        "guided-backprop" => Box::new(Gradient::guided()),
        "grad-cam" => Box::new(GradCam { layer: layer("layer4") }),
        "linear-approx" => Box::new(LinearApprox { layer: layer("layer4") }),
        "excitation-backprop" | "contrastive-excitation-backprop" => Box::new(ExcitationBackprop {
            layer: layer("layer3"),
            contrastive: name.starts_with("contrastive"),
        }),
        "rise" => Box::new(Rise {
            masks: args.rise_masks,
            cells: args.rise_cells,
            p: args.rise_p,
            seed: args.seed,
            ..Default::default()
        }),
        "occlusion" => Box::new(Occlusion {
            window: args.occlusion_window,
            stride: args.occlusion_stride,
            ..Default::default()
        }),
        "integrated-gradients" => Box::new(IntegratedGradients {
            steps: args.ig_steps,
            baseline: match args.ig_baseline.as_str() {
                "zero" => Baseline::Zero,
                "black" => Baseline::Constant((0..3).map(|c| (-pre.mean[c] / pre.std[c]) as f64).collect()),
                "blur" => Baseline::Blur(10.0),
                path if path.ends_with(".safetensors") => {
                    let mut t = candle_core::safetensors::load(path, &candle_core::Device::Cpu)
                        .with_context(|| format!("cannot read the baseline {path}"))?;
                    Baseline::Given(
                        t.remove("baseline")
                            .with_context(|| format!("{path} holds no tensor `baseline`"))?,
                    )
                }
                other => bail!("--ig-baseline `{other}`: use zero, black, blur or a .safetensors file"),
            },
            ..Default::default()
        }),
        other => bail!(
            "unknown method `{other}`; use extremal, gradient, deconvnet, guided-backprop, grad-cam, linear-approx, \
             excitation-backprop, contrastive-excitation-backprop, rise, occlusion or integrated-gradients"
        ),
    }))
}

/// Extremal perturbation as a saliency method: the sum of the masks of all areas (TorchRay's
/// benchmark).
pub(crate) struct ExtremalSaliency(pub(crate) ExtremalConfig);

impl Method for ExtremalSaliency {
    fn name(&self) -> &'static str {
        "extremal"
    }

    fn saliency(
        &self,
        net: &dyn Network,
        x: &candle_core::Tensor,
        target: usize,
    ) -> extremal_attr::Result<candle_core::Tensor> {
        let r = extremal_perturbation(net, x, target, &self.0, &mut |_| {})
            .map_err(|e| extremal_attr::Error::Invalid(e.to_string()))?;
        Ok(r.masks.sum_keepdim(0)?)
    }
}

/// `--method` other than extremal: one saliency map, `overlay.png` and `saliency.safetensors`.
fn run_baseline(
    args: &AttributeArgs,
    mut out: Option<OutDir>,
    method: &dyn Method,
    model: &extremal_models::Model,
    x: &candle_core::Tensor,
    target: usize,
) -> Result<()> {
    let start = std::time::Instant::now();
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!("{} …", method.name()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let map = extremal_attr::attribute(method, model, x, target);
    spinner.finish_and_clear();
    let map = map?;
    let seconds = start.elapsed().as_secs_f64();
    let report = json!({
        "model": model.name(),
        "method": method.name(),
        "target": target,
        "label": model.labels().get(target).cloned().unwrap_or_default(),
        "shape": map.dims(),
        "seconds": seconds,
    });
    if let Some(dir) = out.as_mut() {
        render::save_tensor(&map, "saliency", &dir.path("saliency.safetensors"))?;
        let rgb = model.preprocess().denormalize(x)?.squeeze(0)?;
        render::save_png(
            &render::heat_overlay(&rgb, &map.squeeze(0)?.squeeze(0)?)?,
            &dir.path("overlay.png"),
        )?;
    }
    let printed = render::report(out.as_mut(), "report.json", &report, args.json)?;
    if let Some(o) = out.as_mut() {
        o.commit()?;
    }
    if !printed {
        crate::out(&format!(
            "{} {} for class {} ({}) in {seconds:.2} s\n",
            model.name(),
            method.name(),
            target,
            model.labels().get(target).cloned().unwrap_or_default()
        ));
    }
    Ok(())
}

pub(crate) fn run(args: &AttributeArgs) -> Result<()> {
    let mut out = args.out.as_deref().map(OutDir::prepare).transpose()?;
    let (model, x) = args.model.load_with_image(&args.input, args.keep_aspect, "attribute")?;
    let method = baseline(&args.method.method, &args.method.options, model.preprocess())?;
    let cfg = ExtremalConfig {
        areas: args.areas.clone(),
        iterations: args.iterations,
        game: args.game.parse()?,
        reward: args.reward.parse()?,
        perturbation: args.perturbation.parse()?,
        smooth: args.smooth,
        ..Default::default()
    };
    if let Some(bad) = cfg.areas.iter().find(|a| !(**a > 0.0 && **a <= 1.0)) {
        bail!("--areas: {bad} is not a fraction of the image; use values in (0, 1], e.g. --areas 0.05,0.1,0.2");
    }
    let logits = model.forward(&x)?;
    let target = crate::class_target(&logits, args.target)?;
    if let Some(method) = &method {
        return run_baseline(args, out, method.as_ref(), &model, &x, target);
    }
    let unperturbed = reward(&logits, target, cfg.reward)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?[0];

    let bar = ProgressBar::new(cfg.iterations as u64);
    bar.set_style(
        ProgressStyle::with_template("extremal perturbation [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})")
            .unwrap()
            .progress_chars("=> "),
    );
    let result = extremal_perturbation(&model, &x, target, &cfg, &mut |t| bar.set_position(t as u64 + 1))?;
    bar.finish_and_clear();

    let masks = result.masks.to_dtype(DType::F32)?;
    let areas: Vec<serde_json::Value> = cfg
        .areas
        .iter()
        .enumerate()
        .map(|(i, &a)| -> Result<serde_json::Value> {
            let visible = masks.get(i)?.mean_all()?.to_scalar::<f32>()? as f64;
            Ok(json!({"area": a, "visible_area": visible, "reward": result.rewards[i]}))
        })
        .collect::<Result<_>>()?;
    let report = json!({
        "model": model.name(),
        "target": target,
        "label": model.labels().get(target).cloned().unwrap_or_default(),
        "game": args.game,
        "reward_kind": args.reward,
        "iterations": cfg.iterations,
        "unperturbed_reward": unperturbed,
        "areas": areas,
    });

    if let Some(dir) = out.as_mut() {
        render::save_tensor(&masks, "masks", &dir.path("masks.safetensors"))?;
        render::save_tensor(&masks.sum_keepdim(0)?, "saliency", &dir.path("saliency.safetensors"))?;
        let rgb = model.preprocess().denormalize(&x)?.squeeze(0)?;
        for (i, a) in cfg.areas.iter().enumerate() {
            let m = masks.get(i)?; // (1, H, W)
            let seen = rgb.broadcast_mul(&m.to_dtype(rgb.dtype())?)?;
            render::save_png(&render::rgb_image(&seen)?, &dir.path(&format!("masked-{a}.png")))?;
            let heat = m.squeeze(0)?;
            render::save_png(
                &render::heat_overlay(&rgb, &heat)?,
                &dir.path(&format!("overlay-{a}.png")),
            )?;
        }
    }
    let printed = render::report(out.as_mut(), "report.json", &report, args.json)?;
    if let Some(o) = out.as_mut() {
        o.commit()?;
    }
    if !printed {
        let mut text = format!(
            "{} class {} ({}), {} game, {} reward; unperturbed reward {:.4}\n",
            model.name(),
            target,
            model.labels().get(target).cloned().unwrap_or_default(),
            args.game,
            args.reward,
            unperturbed
        );
        for (i, a) in cfg.areas.iter().enumerate() {
            text.push_str(&format!(
                "  area {a:<5} visible area {:.4}  reward {:.4}\n",
                report["areas"][i]["visible_area"].as_f64().unwrap_or(0.0),
                result.rewards[i]
            ));
        }
        crate::out(&text);
    }
    Ok(())
}
