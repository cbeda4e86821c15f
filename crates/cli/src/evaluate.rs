//! `extremal evaluate`: an attribution method scored over a VOC or COCO dataset (pointing
//! game, deletion, insertion), one JSON line per (image, class), sharded and resumable; and
//! `extremal evaluate merge`, which combines shards into the final table.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use extremal_attr::{attribute, causal_curve_over, saliency_point, Causal, ExcitationBackprop, Method};
use extremal_eval::{
    merge, pairs, read_records, ClassMap, Dataset, DifficultFlags, Format, Journal, Mapped, Record, Shard,
};
use extremal_hook::Network;
use extremal_mask::ExtremalConfig;
use extremal_models::load_input_within;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::attribute::{baseline, ExtremalSaliency, MethodArgs};
use crate::{render, ModelArgs};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct EvaluateArgs {
    #[command(subcommand)]
    command: Option<EvaluateCommand>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    method: MethodArgs,
    /// pointing (TorchRay's pointing game), deletion or insertion (RISE's causal metrics).
    #[arg(long, default_value = "pointing")]
    metric: String,
    /// The dataset directory: VOC (`Annotations/`, `JPEGImages/`, `ImageSets/Main/`) or COCO
    /// (`annotations/instances_SUBSET.json`, `SUBSET/`).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// voc or coco.
    #[arg(long, default_value = "voc")]
    format: String,
    /// The subset (default: test for VOC, val2014 for COCO).
    #[arg(long)]
    subset: Option<String>,
    /// Score only the excitation-backprop benchmark's "difficult" pairs, listed in this file
    /// (TorchRay's `pointing_game_ebp_*_difficult.txt` format).
    #[arg(long)]
    difficult: Option<PathBuf>,
    /// The records file (JSON lines). An existing file is resumed: its pairs are skipped.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run share K of N (K from 0): images i with i mod N = K. Kubernetes: `--shard
    /// $JOB_COMPLETION_INDEX/N`; Slurm: `--shard $SLURM_ARRAY_TASK_ID/N`.
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Stop after this many new pairs (the rest is done by running the command again).
    #[arg(long)]
    limit: Option<usize>,
    /// How the model's classes stand for the dataset's: imagenet (the bundled VOC/COCO →
    /// ImageNet map; a class scores the largest of its ImageNet logits), identity (weights
    /// fine-tuned on the dataset), or a map file. Default: identity when the model has as
    /// many classes as the dataset, else imagenet.
    #[arg(long)]
    class_map: Option<String>,
    /// Pointing game: blur the map (resized to the image) with σ = S·max(H, W), replicated
    /// borders, before taking its maximum. Default: TorchRay's benchmark, 0.02 for gradient,
    /// deconvnet and guided-backprop, else 0.
    #[arg(long)]
    smooth: Option<f64>,
    /// Pointing game tolerance in pixels.
    #[arg(long, default_value_t = 15.0)]
    tolerance: f64,
    /// Extremal perturbation: areas (default: TorchRay's benchmark, 0.025,0.05,0.1,0.2 for VOC
    /// and 0.018,0.025,0.05,0.1 for COCO).
    #[arg(long, value_delimiter = ',')]
    areas: Option<Vec<f64>>,
    /// Extremal perturbation: iterations.
    #[arg(long, default_value_t = 800)]
    iterations: usize,
    /// Print the table of this run's records as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
enum EvaluateCommand {
    /// Combine the records of several shards into the final table.
    Merge {
        /// Records files (the shards' --out).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to write the table (JSON).
        #[arg(long)]
        out: PathBuf,
    },
}

/// TorchRay's `center` baseline: the map is highest at the image centre.
struct Centre;

impl Method for Centre {
    fn name(&self) -> &'static str {
        "center"
    }

    fn saliency(&self, _net: &dyn Network, x: &Tensor, _target: usize) -> extremal_attr::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (cy, cx) = ((h / 2) as f64, (w / 2) as f64);
        let v: Vec<f32> = (0..h * w)
            .map(|i| -(((i / w) as f64 - cy).powi(2) + ((i % w) as f64 - cx).powi(2)) as f32)
            .collect();
        Ok(Tensor::from_vec(v, (1, 1, h, w), x.device())?)
    }
}

fn method_of(args: &EvaluateArgs, format: Format, pre: &extremal_models::Preprocess) -> Result<Box<dyn Method>> {
    if args.method.method == "center" {
        return Ok(Box::new(Centre));
    }
    Ok(match baseline(&args.method.method, &args.method.options, pre)? {
        Some(m) => m,
        None => {
            let areas = args.areas.clone().unwrap_or_else(|| match format {
                Format::Voc => vec![0.025, 0.05, 0.1, 0.2],
                Format::Coco => vec![0.018, 0.025, 0.05, 0.1],
            });
            Box::new(ExtremalSaliency(ExtremalConfig {
                areas,
                iterations: args.iterations,
                smooth: 0.09,
                ..Default::default()
            }))
        }
    })
}

pub(crate) fn run(args: &EvaluateArgs) -> Result<()> {
    if let Some(EvaluateCommand::Merge { files, out }) = &args.command {
        return run_merge(files, out, args.json);
    }
    let (Some(dir), Some(out)) = (&args.dataset, &args.out) else {
        bail!("evaluate needs --dataset DIR and --out FILE.jsonl (or: evaluate merge FILE… --out table.json)");
    };
    if args.limit == Some(0) {
        bail!("--limit 0 scores nothing; give 1 or more pairs (or leave it out for all)");
    }
    let metric = args.metric.as_str();
    let causal = match metric {
        "pointing" => None,
        "deletion" => Some(Causal::Deletion),
        "insertion" => Some(Causal::Insertion),
        other => bail!("unknown metric `{other}`; use pointing, deletion or insertion"),
    };
    let format: Format = args.format.parse()?;
    let shard: Shard = args.shard.parse()?;
    let dataset = Dataset::load(dir, format, args.subset.as_deref())
        .with_context(|| format!("cannot read the {} dataset at {}", format.name(), dir.display()))?;
    let flags = args.difficult.as_deref().map(DifficultFlags::load).transpose()?;
    let model = args.model.load()?;
    let method = method_of(args, format, model.preprocess())?;
    let probe = Tensor::zeros((1, 3, 224, 224), DType::F32, model.device())?;
    let model_classes = model.forward(&probe)?.dim(1)?;
    let map = match args.class_map.as_deref() {
        Some("identity") => ClassMap::identity(dataset.classes.len()),
        Some("imagenet") => imagenet_map(format, model_classes)?,
        Some(path) => ClassMap::parse(
            &std::fs::read_to_string(path).with_context(|| format!("cannot read the class map {path}"))?,
        )?,
        None if model_classes == dataset.classes.len() => ClassMap::identity(model_classes),
        None => imagenet_map(format, model_classes)?,
    };
    if map.sets.len() != dataset.classes.len() {
        bail!(
            "the class map has {} classes but the dataset has {}",
            map.sets.len(),
            dataset.classes.len()
        );
    }
    let mapped = Mapped { net: &model, map: &map };

    let mut journal = Journal::open(out)?;
    let done = journal.done_keys();
    if let Some(r) = journal.done.first() {
        if r.method != method.name() || r.metric != metric {
            bail!(
                "{} holds records of {} / {}, not {} / {metric}: use another --out",
                out.display(),
                r.method,
                r.metric,
                method.name()
            );
        }
    }
    let todo: Vec<(usize, usize)> = pairs(&dataset, shard)
        .into_iter()
        .filter(|(i, c)| !done.contains(&(dataset.items[*i].name.clone(), *c)))
        .take(args.limit.unwrap_or(usize::MAX))
        .collect();
    let bar = ProgressBar::new(todo.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("evaluate [{bar:30}] {pos}/{len} pairs {elapsed_precise} (eta {eta}) {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    let smooth = args.smooth.unwrap_or(match method.name() {
        "gradient" | "deconvnet" | "guided-backprop" => 0.02,
        _ => 0.0,
    });
    let keep_aspect = method.name() != "rise"; // TorchRay: 224 shorter side; RISE 224×224
    let mut cached: Option<(usize, Tensor)> = None;
    for &(i, class) in &todo {
        let item = &dataset.items[i];
        bar.set_message(format!("{} {}", item.name, dataset.classes[class]));
        let mut record = Record {
            image: item.name.clone(),
            class,
            class_name: dataset.classes[class].clone(),
            method: method.name().to_string(),
            metric: metric.to_string(),
            dataset_classes: dataset.classes.len(),
            skipped: None,
            point: None,
            hit: None,
            auc: None,
        };
        if flags.as_ref().is_some_and(|f| !f.scored(&item.name, class)) {
            record.skipped = Some("not in subset".into());
        } else if metric == "pointing" && item.all_difficult(class) {
            record.skipped = Some("difficult".into());
        } else if map.of(class).is_empty() {
            record.skipped = Some("unmapped".into());
        } else {
            let x = match &cached {
                Some((j, x)) if *j == i => x.clone(),
                _ => {
                    let x = load_input_within(
                        &item.path,
                        model.preprocess(),
                        keep_aspect,
                        args.model.max_pixels,
                        DType::F32,
                        model.device(),
                    )?;
                    cached = Some((i, x.clone()));
                    x
                }
            };
            let map_here = if method.name() == "contrastive-excitation-backprop" {
                // Its classifier is the model's own: use the ImageNet class that stands for
                // the dataset class on this image (the largest logit, which the map's max picks).
                let logits = model.forward(&x)?.squeeze(0)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                let best = *map
                    .of(class)
                    .iter()
                    .max_by(|a, b| logits[**a].total_cmp(&logits[**b]))
                    .expect("non-empty");
                attribute(
                    &ExcitationBackprop {
                        layer: args.method.options.layer.clone().unwrap_or_else(|| "layer3".into()),
                        contrastive: true,
                    },
                    &model,
                    &x,
                    best,
                )?
            } else {
                attribute(method.as_ref(), &mapped, &x, class)?
            };
            match causal {
                None => {
                    let (w, h) = item.size;
                    let mut at_image = extremal_ops::resize_bilinear(&map_here, h, w)?;
                    if smooth > 0.0 {
                        let sigma = smooth * w.max(h) as f64;
                        at_image = extremal_ops::gaussian_blur(&at_image, sigma, extremal_ops::Border::Replicate)?;
                    }
                    let point = if method.name() == "center" {
                        (w / 2, h / 2)
                    } else {
                        saliency_point(&at_image)?
                    };
                    record.point = Some(point);
                    record.hit = Some(extremal_attr::pointing_hit_at(
                        point,
                        &item.truth(class),
                        (h, w),
                        args.tolerance,
                    )?);
                }
                Some(kind) => {
                    let curve = causal_curve_over(&model, &x, &map_here, map.of(class), kind, 16)?;
                    record.auc = Some(curve.auc);
                }
            }
        }
        journal.append(&record)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let all = read_records(out)?;
    let total = pairs(&dataset, shard).len();
    let table = merge(&all).ok();
    let summary = json!({
        "records": out.display().to_string(),
        "shard": format!("{}/{}", shard.index, shard.count),
        "done": all.len(),
        "pairs": total,
        "table": table,
    });
    if args.json {
        crate::out(&format!("{summary}\n"));
    } else {
        let value = table.as_ref().map_or(f64::NAN, |t| t.value);
        crate::out(&format!(
            "{} / {} on {} (shard {}/{}): {}/{} pairs done, {} {:.4}\n",
            method.name(),
            metric,
            dir.display(),
            shard.index,
            shard.count,
            all.len(),
            total,
            if metric == "pointing" { "accuracy" } else { "mean AUC" },
            value
        ));
    }
    Ok(())
}

fn imagenet_map(format: Format, model_classes: usize) -> Result<ClassMap> {
    if model_classes != 1000 {
        bail!(
            "the model has {model_classes} classes: the bundled class map is for ImageNet (1000); \
             pass --class-map identity (weights fine-tuned on the dataset) or a map file"
        );
    }
    Ok(match format {
        Format::Voc => ClassMap::voc_imagenet(),
        Format::Coco => ClassMap::coco_imagenet(),
    })
}

fn run_merge(files: &[PathBuf], out: &std::path::Path, json: bool) -> Result<()> {
    // The table never replaces one of the journals it is made from.
    let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if let Some(f) = files.iter().find(|f| same(f, out)) {
        bail!(
            "--out {} is one of the journals being merged; give the table another name",
            f.display()
        );
    }
    let mut records = Vec::new();
    for f in files {
        records.extend(read_records(f)?);
    }
    let table = merge(&records)?;
    let text = serde_json::to_string_pretty(&table)?;
    render::write_atomic(out, format!("{text}\n").as_bytes())?;
    if json {
        crate::out(&format!("{}\n", serde_json::to_string(&table)?));
    } else {
        crate::out(&format!(
            "{} / {}: {} pairs from {} files, {} {:.4} (over the classes with pairs: {:.4}) → {}\n",
            table.method,
            table.metric,
            table.pairs,
            files.len(),
            if table.metric == "pointing" {
                "accuracy"
            } else {
                "mean AUC"
            },
            table.value,
            table.value_scored_classes,
            out.display()
        ));
    }
    Ok(())
}
