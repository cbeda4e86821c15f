//! `extremal attribute`: extremal perturbation (TorchRay's method) or another attribution
//! method on one image or a folder run.

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use extremal_attr::{Method, MethodKind};
use extremal_eval::folder::image_folder;
use extremal_eval::FolderRun;
use extremal_hook::Network;
use extremal_mask::{extremal_perturbation, ExtremalConfig, ExtremalResult};
use extremal_models::Model;
use serde_json::{json, Value};

use crate::args::{photograph, progress_bar, spinner, InputsArgs, MethodArgs, ModelArgs, OutputArgs, PictureArgs};
use crate::folder::{self, Folder};
use crate::outdir::OutDir;
use crate::render::{self, ValueRange};

/// Image-space extremal perturbation (or, with `--layer`, a spatial mask at that site), or
/// another attribution method. `--out` writes masks.safetensors, saliency.safetensors,
/// masked-<area>.png, overlay-<area>.png and report.json (another method:
/// saliency.safetensors, overlay.png and report.json); pictures are at the photograph's own
/// resolution. Several inputs or a folder: a folder run into `--out DIR`, each image's files
/// in DIR/<its path>/, one record per image in DIR/results.jsonl (a rerun skips the images
/// done); gradient, deconvnet, guided-backprop, grad-cam and linear-approx take --batch
/// images per pass, the other methods one at a time.
#[derive(clap::Args)]
pub(crate) struct AttributeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    inputs: InputsArgs,
    /// Target class (default: each image's top-1 class).
    #[arg(long)]
    target: Option<usize>,
    /// The attribution method.
    #[arg(long, value_enum, default_value_t = MethodKind::Extremal)]
    method: MethodKind,
    #[command(flatten)]
    options: MethodArgs,
    #[command(flatten)]
    pictures: PictureArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// The class each image of `x` is explained for: `--target` or its top-1 class.
fn targets(model: &Model, x: &Tensor, target: Option<usize>) -> Result<Vec<usize>> {
    let logits = model.forward(x)?;
    (0..x.dim(0)?)
        .map(|i| crate::class_target(&logits.narrow(0, i, 1)?, target))
        .collect()
}

/// The label of class `target`.
fn label(model: &Model, target: usize) -> String {
    model.labels().get(target).cloned().unwrap_or_default()
}

/// One image's saliency map: for which class, in how many seconds.
struct Saliency<'a> {
    map: &'a Tensor,
    target: usize,
    seconds: f64,
}

/// A baseline's files (saliency.safetensors, overlay.png) and its report.
fn save_baseline(
    args: &AttributeArgs,
    dir: Option<&mut OutDir>,
    method: &dyn Method,
    model: &Model,
    photo: &Tensor,
    saliency: Saliency,
) -> Result<Value> {
    let Saliency { map, target, seconds } = saliency;
    if let Some(dir) = dir {
        render::save_tensors_in(dir, map, "saliency", "saliency", args.output.npy)?;
        let range = if method.signed() {
            ValueRange::Signed
        } else {
            ValueRange::Data
        };
        let picture = render::overlay(photo, map, &args.pictures.style(range)?)?;
        render::save_png(&picture, &dir.path("overlay.png"))?;
    }
    Ok(json!({
        "model": model.name(),
        "method": method.name(),
        "target": target,
        "label": label(model, target),
        "shape": map.dims(),
        "signed": method.signed(),
        "seconds": seconds,
    }))
}

/// Extremal perturbation's files (masks, saliency, masked-<area>.png, overlay-<area>.png) and
/// its report.
fn save_extremal(
    args: &AttributeArgs,
    dir: Option<&mut OutDir>,
    model: &Model,
    x: &Tensor,
    photo: &Tensor,
    result: &ExtremalResult,
    cfg: &ExtremalConfig,
) -> Result<Value> {
    let summary = result.summary(cfg)?;
    let mut report = serde_json::to_value(&summary)?;
    report["model"] = json!(model.name());
    report["label"] = json!(label(model, summary.target));
    if let Some(dir) = dir {
        let (_, _, h, w) = x.dims4()?;
        let masks = result.masks.to_dtype(DType::F32)?;
        render::save_tensors_in(dir, &masks, "masks", "masks", args.output.npy)?;
        let at_image = result.masks_at(h, w)?.to_dtype(DType::F32)?;
        render::save_tensors_in(dir, &at_image.sum_keepdim(0)?, "saliency", "saliency", args.output.npy)?;
        let (_, ph, pw) = photo.dims3()?;
        let at_photo = extremal_ops::resize_bilinear(&at_image, ph, pw)?.clamp(0.0, 1.0)?;
        let style = args.pictures.style(ValueRange::Fixed(0.0, 1.0))?;
        for (i, a) in cfg.areas.iter().enumerate() {
            let seen = photo.broadcast_mul(&at_photo.get(i)?)?;
            render::save_png(&render::rgb_image(&seen)?, &dir.path(&format!("masked-{a}.png")))?;
            let picture = render::overlay(photo, &at_image.get(i)?, &style)?;
            render::save_png(&picture, &dir.path(&format!("overlay-{a}.png")))?;
        }
    }
    Ok(report)
}

/// The extremal configuration of the command line.
fn extremal_config(args: &AttributeArgs, model: &Model) -> Result<ExtremalConfig> {
    let options = args.options.options(model, vec![0.1], 0.0)?;
    Ok(ExtremalConfig {
        site: args.options.layer.clone(),
        ..options.extremal
    })
}

pub(crate) fn run(args: &AttributeArgs) -> Result<()> {
    // The picture options are checked before any long work.
    args.pictures.style(ValueRange::Data)?;
    let Some(input) = args.inputs.single() else {
        return run_folder(args);
    };
    let mut out = args.output.out.as_deref().map(OutDir::prepare).transpose()?;
    let (model, x) = args.model.load_with_image(&input, "attribute")?;
    let photo = photograph(&args.model, &model, &input.input, &x)?;
    let target = targets(&model, &x, args.target)?[0];
    let text = if args.method != MethodKind::Extremal {
        let method = args.options.method(args.method, &model, vec![0.1], 0.0)?;
        let start = std::time::Instant::now();
        let busy = spinner(format!("{} …", method.name()));
        let map = extremal_attr::attribute(method.as_ref(), &model, &x, target);
        busy.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        let map = map?;
        let saliency = Saliency {
            map: &map,
            target,
            seconds,
        };
        let report = save_baseline(args, out.as_mut(), method.as_ref(), &model, &photo, saliency)?;
        let text = format!(
            "{} {} for class {} ({}) in {seconds:.2} s\n",
            model.name(),
            method.name(),
            target,
            label(&model, target)
        );
        (report, text)
    } else {
        let cfg = extremal_config(args, &model)?;
        let bar = progress_bar(cfg.iterations as u64, "extremal perturbation", " (eta {eta})");
        let result = extremal_perturbation(&model, &x, target, &cfg, &mut |t| bar.set_position(t as u64 + 1));
        bar.finish_and_clear();
        let report = save_extremal(args, out.as_mut(), &model, &x, &photo, &result?, &cfg)?;
        let text = extremal_text(&model, &report);
        (report, text)
    };
    let (report, text) = text;
    let printed = render::report(out.as_mut(), "report.json", &report, args.output.json)?;
    if let Some(o) = out.as_mut() {
        o.commit()?;
    }
    if !printed {
        crate::out(&text);
    }
    Ok(())
}

/// Extremal perturbation's result as text.
fn extremal_text(model: &Model, report: &Value) -> String {
    let at = report["site"].as_str().map(|s| format!(" at {s}")).unwrap_or_default();
    let target = report["target"].as_u64().unwrap_or_default() as usize;
    let schedule = match report["schedule"].as_str() {
        Some("fast") => format!(", fast schedule ({} iterations)", report["iterations"]),
        _ => String::new(),
    };
    let mut text = format!(
        "{} class {} ({}), {} game, {} reward{at}{schedule}; unperturbed reward {:.4}\n",
        model.name(),
        target,
        label(model, target),
        report["game"].as_str().unwrap_or_default(),
        report["reward_kind"].as_str().unwrap_or_default(),
        report["unperturbed_reward"].as_f64().unwrap_or(f64::NAN)
    );
    for a in report["areas"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "  area {:<5} visible area {:.4}  reward {:.4}\n",
            a["area"].as_f64().unwrap_or(f64::NAN),
            a["visible_area"].as_f64().unwrap_or(f64::NAN),
            a["reward"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    text
}

/// `attribute` over several inputs or folders into `--out DIR`.
fn run_folder(args: &AttributeArgs) -> Result<()> {
    let Some(out) = &args.output.out else {
        bail!("a folder run needs --out DIR (each image's files go to DIR/<image>/, its record to DIR/results.jsonl)");
    };
    let mut folder = Folder::<Value>::open(&args.inputs, Some(out))?;
    let model = args.model.load()?;
    let method = args.options.method(args.method, &model, vec![0.1], 0.0)?;
    let cfg = extremal_config(args, &model)?;
    let batch = if method.batches() { args.inputs.batch } else { 1 };
    let total = folder.mine();
    let failed = folder.each(&args.model, &model, &args.inputs, batch, "attribute", |items, x| {
        let targets = targets(&model, x, args.target)?;
        let start = std::time::Instant::now();
        let maps = if args.method == MethodKind::Extremal {
            None
        } else {
            Some(extremal_attr::attribute_batch(method.as_ref(), &model, x, &targets)?)
        };
        let seconds = start.elapsed().as_secs_f64() / items.len() as f64;
        let mut records = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let xi = x.narrow(0, i, 1)?;
            let photo = photograph(&args.model, &model, &item.path, &xi)?;
            let mut dir = OutDir::prepare(&image_folder(out, item))?;
            let mut report = match &maps {
                Some(maps) => save_baseline(
                    args,
                    Some(&mut dir),
                    method.as_ref(),
                    &model,
                    &photo,
                    Saliency {
                        map: &maps.narrow(0, i, 1)?,
                        target: targets[i],
                        seconds,
                    },
                )?,
                None => {
                    let result = extremal_perturbation(&model, &xi, targets[i], &cfg, &mut |_| {})?;
                    save_extremal(args, Some(&mut dir), &model, &xi, &photo, &result, &cfg)?
                }
            };
            report["image"] = json!(item.name);
            render::report(Some(&mut dir), "report.json", &report, args.output.json)?;
            dir.commit()?;
            records.push(report);
        }
        Ok(records)
    })?;
    if !args.output.json {
        let done = folder
            .run
            .as_ref()
            .map(|r| r.records())
            .transpose()?
            .map_or(0, |r| r.len());
        let results = out.join(FolderRun::<Value>::RESULTS);
        crate::out(&format!(
            "{done} of {total} images done; records in {}\n",
            results.display()
        ));
    }
    folder::finish(failed, total)
}
