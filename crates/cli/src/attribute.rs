//! `extremal attribute`: extremal perturbation (TorchRay's method) or another attribution
//! method on one image.

use anyhow::Result;
use candle_core::DType;
use extremal_attr::{Method, MethodKind};
use extremal_hook::Network;
use extremal_mask::extremal_perturbation;
use serde_json::json;

use crate::args::{progress_bar, spinner, InputArgs, MethodArgs, ModelArgs, OutputArgs};
use crate::outdir::OutDir;
use crate::render;

/// Image-space extremal perturbation (or, with `--layer`, a spatial mask at that site), or
/// another attribution method. `--out` writes masks.safetensors, saliency.safetensors,
/// masked-<area>.png, overlay-<area>.png and report.json (another method: saliency.safetensors,
/// overlay.png and report.json).
#[derive(clap::Args)]
pub(crate) struct AttributeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Target class (default: the top-1 class).
    #[arg(long)]
    target: Option<usize>,
    /// The attribution method.
    #[arg(long, value_enum, default_value_t = MethodKind::Extremal)]
    method: MethodKind,
    #[command(flatten)]
    options: MethodArgs,
    #[command(flatten)]
    output: OutputArgs,
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
    let busy = spinner(format!("{} …", method.name()));
    let map = extremal_attr::attribute(method, model, x, target);
    busy.finish_and_clear();
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
        render::save_tensors_in(dir, &map, "saliency", "saliency", args.output.npy)?;
        let rgb = model.preprocess().denormalise(x)?.squeeze(0)?;
        render::save_png(
            &render::heat_overlay(&rgb, &map.squeeze(0)?.squeeze(0)?)?,
            &dir.path("overlay.png"),
        )?;
    }
    let printed = render::report(out.as_mut(), "report.json", &report, args.output.json)?;
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
    let mut out = args.output.out.as_deref().map(OutDir::prepare).transpose()?;
    let (model, x) = args.model.load_with_image(&args.input, "attribute")?;
    let options = args.options.options(&model, vec![0.1], 0.0)?;
    let logits = model.forward(&x)?;
    let target = crate::class_target(&logits, args.target)?;
    if args.method != MethodKind::Extremal {
        let method = extremal_attr::method(args.method, &options)?;
        return run_baseline(args, out, method.as_ref(), &model, &x, target);
    }
    let cfg = extremal_mask::ExtremalConfig {
        site: args.options.layer.clone(),
        ..options.extremal
    };

    let bar = progress_bar(cfg.iterations as u64, "extremal perturbation", " (eta {eta})");
    let result = extremal_perturbation(&model, &x, target, &cfg, &mut |t| bar.set_position(t as u64 + 1));
    bar.finish_and_clear();
    let result = result?;
    let summary = result.summary(&cfg)?;
    let mut report = serde_json::to_value(&summary)?;
    report["model"] = json!(model.name());
    report["label"] = json!(model.labels().get(target).cloned().unwrap_or_default());

    if let Some(dir) = out.as_mut() {
        let (_, _, h, w) = x.dims4()?;
        let masks = result.masks.to_dtype(DType::F32)?;
        render::save_tensors_in(dir, &masks, "masks", "masks", args.output.npy)?;
        let at_image = result.masks_at(h, w)?.to_dtype(DType::F32)?;
        render::save_tensors_in(dir, &at_image.sum_keepdim(0)?, "saliency", "saliency", args.output.npy)?;
        let rgb = model.preprocess().denormalise(&x)?.squeeze(0)?;
        for (i, a) in cfg.areas.iter().enumerate() {
            let m = at_image.get(i)?; // (1, H, W)
            let seen = rgb.broadcast_mul(&m.to_dtype(rgb.dtype())?)?;
            render::save_png(&render::rgb_image(&seen)?, &dir.path(&format!("masked-{a}.png")))?;
            render::save_png(
                &render::heat_overlay(&rgb, &m.squeeze(0)?)?,
                &dir.path(&format!("overlay-{a}.png")),
            )?;
        }
    }
    let printed = render::report(out.as_mut(), "report.json", &report, args.output.json)?;
    if let Some(o) = out.as_mut() {
        o.commit()?;
    }
    if !printed {
        let at = summary.site.as_deref().map(|s| format!(" at {s}")).unwrap_or_default();
        let mut text = format!(
            "{} class {} ({}), {} game, {} reward{at}; unperturbed reward {:.4}\n",
            model.name(),
            target,
            model.labels().get(target).cloned().unwrap_or_default(),
            report["game"].as_str().unwrap_or_default(),
            report["reward_kind"].as_str().unwrap_or_default(),
            summary.unperturbed_reward
        );
        for a in &summary.areas {
            text.push_str(&format!(
                "  area {:<5} visible area {:.4}  reward {:.4}\n",
                a.area, a.visible_area, a.reward
            ));
        }
        crate::out(&text);
    }
    Ok(())
}
