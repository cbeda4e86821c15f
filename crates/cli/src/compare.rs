//! `extremal compare`: several attribution methods on one image, side by side, optionally
//! scored by RISE's deletion and insertion curves.

use std::time::Instant;

use anyhow::{bail, Result};
use extremal_attr::{attribute, causal_curve, Causal, Method, MethodKind};
use extremal_hook::Network;
use serde_json::json;

use crate::args::{photograph, progress_bar, InputArgs, MethodArgs, ModelArgs, OutputArgs, PictureArgs};
use crate::outdir::OutDir;
use crate::render::{self, ValueRange};

/// Every method, in the order `compare` shows them.
const ALL: &str = "gradient,deconvnet,guided-backprop,grad-cam,linear-approx,excitation-backprop,\
                   contrastive-excitation-backprop,rise,occlusion,integrated-gradients,extremal";

/// Several attribution methods on one image. `--out` writes methods.png (the overlays side by
/// side, signed maps in diverging colours), saliency-<method>.safetensors and report.json.
#[derive(clap::Args)]
pub(crate) struct CompareArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: InputArgs,
    /// Target class (default: the top-1 class).
    #[arg(long)]
    target: Option<usize>,
    /// The methods, comma separated (default: all eleven; extremal's map is the sum of its
    /// areas' masks).
    #[arg(long, value_enum, value_delimiter = ',', default_value = ALL)]
    methods: Vec<MethodKind>,
    #[command(flatten)]
    options: MethodArgs,
    /// Also score each map by RISE's deletion (lower is better) and insertion (higher is
    /// better) areas under the curve.
    #[arg(long)]
    scores: bool,
    #[command(flatten)]
    pictures: PictureArgs,
    #[command(flatten)]
    output: OutputArgs,
}

pub(crate) fn run(args: &CompareArgs) -> Result<()> {
    // The picture options are checked before any long work.
    args.pictures.style(ValueRange::Data)?;
    let mut out = args.output.out.as_deref().map(OutDir::prepare).transpose()?;
    let (model, x) = args.model.load_with_image(&args.input, "compare")?;
    let options = args.options.options(&model, vec![0.1], 0.0)?;
    let methods = args
        .methods
        .iter()
        .map(|&kind| extremal_attr::method(kind, &options))
        .collect::<extremal_attr::Result<Vec<Box<dyn Method>>>>()?;
    if methods.is_empty() {
        bail!("--methods is empty: name at least one method");
    }
    let logits = model.forward(&x)?;
    let target = crate::class_target(&logits, args.target)?;
    let label = model.labels().get(target).cloned().unwrap_or_default();

    let bar = progress_bar(methods.len() as u64, "compare", " {msg}");
    let mut rows = Vec::new();
    let mut maps = Vec::new();
    for method in &methods {
        bar.set_message(method.name());
        let start = Instant::now();
        let map = attribute(method.as_ref(), &model, &x, target)?;
        let seconds = start.elapsed().as_secs_f64();
        let (deletion, insertion) = if args.scores {
            (
                Some(causal_curve(&model, &x, &map, target, Causal::Deletion, 16)?.auc),
                Some(causal_curve(&model, &x, &map, target, Causal::Insertion, 16)?.auc),
            )
        } else {
            (None, None)
        };
        rows.push(json!({
            "method": method.name(),
            "seconds": seconds,
            "deletion": deletion,
            "insertion": insertion,
        }));
        maps.push((method.name(), method.signed(), map));
        bar.inc(1);
    }
    bar.finish_and_clear();

    let (_, _, h, w) = x.dims4()?;
    let report = json!({
        "model": model.name(),
        "target": target,
        "label": label,
        "shape": [h, w],
        "methods": rows,
    });
    if let Some(dir) = out.as_mut() {
        let photo = photograph(&args.model, &model, &args.input.input, &x)?;
        let fit = |p: image::RgbImage| render::fit(&p, render::SHEET_SIDE);
        let mut tiles = vec![(fit(render::rgb_image(&photo)?), format!("{target} {label}"))];
        for (name, signed, map) in &maps {
            render::save_tensors_in(dir, map, "saliency", &format!("saliency-{name}"), args.output.npy)?;
            let range = if *signed { ValueRange::Signed } else { ValueRange::Data };
            tiles.push((
                fit(render::overlay(&photo, map, &args.pictures.style(range)?)?),
                name.to_string(),
            ));
        }
        render::save_png(&render::sheet(&tiles, 4), &dir.path("methods.png"))?;
    }
    let printed = render::report(out.as_mut(), "report.json", &report, args.output.json)?;
    if let Some(o) = out.as_mut() {
        o.commit()?;
    }
    if !printed {
        let mut text = format!("{} class {target} ({label}), {h}x{w}\n", model.name());
        let scored = args.scores;
        text.push_str(&if scored {
            format!("{:<32} {:>9} {:>9}  seconds\n", "method", "deletion", "insertion")
        } else {
            format!("{:<32} seconds\n", "method")
        });
        for r in &rows {
            let name = r["method"].as_str().unwrap_or_default();
            let secs = r["seconds"].as_f64().unwrap_or(0.0);
            text.push_str(&if scored {
                format!(
                    "{name:<32} {:>9.4} {:>9.4}  {secs:.2}\n",
                    r["deletion"].as_f64().unwrap_or(f64::NAN),
                    r["insertion"].as_f64().unwrap_or(f64::NAN)
                )
            } else {
                format!("{name:<32} {secs:.2}\n")
            });
        }
        crate::out(&text);
    }
    Ok(())
}
