//! `extremal evaluate`: an attribution method scored over a VOC or COCO dataset (pointing
//! game, deletion, insertion), one JSON line per (image, class), sharded and resumable; and
//! `extremal evaluate merge`, which combines shards into the final table.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use extremal_attr::MethodKind;
use extremal_eval::{
    merge, pairs, read_records, skip_reason, ClassMap, DifficultFlags, Journal, Metric, PairScorer, Record, Scoring,
    Shard,
};
use extremal_hook::Network;
use serde_json::json;

use crate::args::{progress_bar, DatasetArgs, MethodArgs, ModelArgs};
use crate::render;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct EvaluateArgs {
    #[command(subcommand)]
    command: Option<EvaluateCommand>,
    #[command(flatten)]
    model: ModelArgs,
    /// The attribution method (`center`: TorchRay's centre baseline).
    #[arg(long, value_enum, default_value_t = MethodKind::Extremal)]
    method: MethodKind,
    #[command(flatten)]
    options: MethodArgs,
    /// pointing (TorchRay's pointing game), deletion or insertion (RISE's causal metrics).
    #[arg(long, value_enum, default_value_t = Metric::Pointing)]
    metric: Metric,
    #[command(flatten)]
    data: DatasetArgs,
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
    pointing_smooth: Option<f64>,
    /// Pointing game tolerance in pixels.
    #[arg(long, default_value_t = 15.0)]
    tolerance: f64,
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

pub(crate) fn run(args: &EvaluateArgs) -> Result<()> {
    if let Some(EvaluateCommand::Merge { files, out }) = &args.command {
        return run_merge(files, out, args.json);
    }
    let (Some(dir), Some(out)) = (&args.data.dataset, &args.out) else {
        bail!("evaluate needs --dataset DIR and --out FILE.jsonl (or: evaluate merge FILE… --out table.json)");
    };
    if args.limit == Some(0) {
        bail!("--limit 0 scores nothing; give 1 or more pairs (or leave it out for all)");
    }
    let metric = args.metric;
    let format = args.data.format;
    let shard: Shard = args.shard.parse()?;
    let dataset = args.data.load(dir)?;
    let flags = args.difficult.as_deref().map(DifficultFlags::load).transpose()?;
    let model = args.model.load()?;
    // TorchRay's benchmark smooths extremal perturbation's masks (σ = 0.09 of the side).
    let method = args
        .options
        .method(args.method, &model, format.benchmark_areas(), 0.09)?;
    let probe = Tensor::zeros((1, 3, 224, 224), DType::F32, model.device())?;
    let model_classes = model.forward(&probe)?.dim(1)?;
    let map = ClassMap::resolve(args.class_map.as_deref(), format, model_classes, dataset.classes.len())?;

    let mut journal = Journal::<Record>::open(out)?;
    let done = journal.done_keys();
    if let Some(r) = journal.done.first() {
        if r.method != method.name() || r.metric != metric.name() {
            bail!(
                "{} holds records of {} / {}, not {} / {}: use another --out",
                out.display(),
                r.method,
                r.metric,
                method.name(),
                metric.name()
            );
        }
    }
    let todo: Vec<(usize, usize)> = pairs(&dataset, shard)
        .into_iter()
        .filter(|(i, c)| !done.contains(&(dataset.items[*i].name.clone(), *c)))
        .take(args.limit.unwrap_or(usize::MAX))
        .collect();
    let bar = progress_bar(todo.len() as u64, "evaluate", " pairs (eta {eta}) {msg}");
    let scoring = Scoring {
        metric,
        smooth: args.pointing_smooth,
        tolerance: args.tolerance,
        ..Default::default()
    };
    let scorer = PairScorer {
        method: method.as_ref(),
        net: &model,
        map: &map,
        scoring: &scoring,
    };
    let mut cached: Option<(usize, Tensor)> = None;
    for &(i, class) in &todo {
        let item = &dataset.items[i];
        bar.set_message(format!("{} {}", item.name, dataset.classes[class]));
        let mut record = Record {
            image: item.name.clone(),
            class,
            class_name: dataset.classes[class].clone(),
            method: method.name().to_string(),
            metric: metric.name().to_string(),
            dataset_classes: dataset.classes.len(),
            skipped: None,
            point: None,
            hit: None,
            auc: None,
        };
        if let Some(reason) = skip_reason(flags.as_ref(), item, class, metric, &map) {
            record.skipped = Some(reason.into());
        } else {
            let x = match &cached {
                Some((j, x)) if *j == i => x.clone(),
                _ => {
                    let x = args.model.image(&model, &item.path, method.keeps_aspect())?;
                    cached = Some((i, x.clone()));
                    x
                }
            };
            scorer.score(&x, item, class, &mut record)?;
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
            metric.name(),
            dir.display(),
            shard.index,
            shard.count,
            all.len(),
            total,
            if metric == Metric::Pointing {
                "accuracy"
            } else {
                "mean AUC"
            },
            value
        ));
    }
    Ok(())
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
