//! `extremal`: what convolutional networks look at, from the command line.

use std::process::ExitCode;

use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use clap::{Args, Parser, Subcommand};
use extremal_hook::Network;
use serde_json::json;

use args::{device, InputsArgs, ModelArgs};

mod args;
mod attribute;
mod bench;
mod channels;
mod compare;
mod evaluate;
mod exemplars;
mod folder;
mod invert;
mod outdir;
mod render;
mod visualize;

#[derive(Parser)]
#[command(
    name = "extremal",
    version,
    about = "Explain what convolutional networks look at and which channels carry a decision."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every site of a model with its output shape at the model's input size.
    Layers(LayersArgs),
    /// Classify images: the top classes with labels and probabilities. Several inputs or a
    /// folder: one result per image (batched, --batch at a time), and with --out DIR one
    /// record per image in DIR/results.jsonl (a rerun skips the images done).
    Classify(ClassifyArgs),
    /// Channel-space extremal masks: the fewest channels at a layer that keep the class.
    Channels(channels::ChannelsArgs),
    /// Image-space extremal perturbation: the smallest smooth region that keeps the class.
    Attribute(attribute::AttributeArgs),
    /// Feature inversion: an image whose activation at a layer matches the photograph's (or
    /// only some of its channels).
    Invert(invert::InvertArgs),
    /// Feature visualization: images optimised from noise to excite channels, a neuron or a
    /// direction at a layer (Lucid's recipe).
    Visualize(visualize::VisualizeArgs),
    /// Dataset exemplars: the images (and the receptive field of the position) that excite
    /// each channel of a layer most, over a folder or a VOC/COCO dataset; resumable, shardable.
    Exemplars(exemplars::ExemplarsArgs),
    /// Several attribution methods on one image side by side, optionally scored by deletion
    /// and insertion.
    Compare(compare::CompareArgs),
    /// Score an attribution method over a VOC or COCO dataset (pointing game, deletion,
    /// insertion): sharded, resumable; `evaluate merge` combines the shards.
    Evaluate(evaluate::EvaluateArgs),
    /// Time forward and forward + backward-to-input passes of a model.
    Bench(bench::BenchArgs),
    /// Write a weight file (.pth, zip or legacy, or .safetensors) as safetensors, as the zoo
    /// reads it; with --model, checked against that model's tensors and shapes first.
    Convert(ConvertArgs),
}

#[derive(Args)]
struct ConvertArgs {
    /// The weights to convert.
    input: std::path::PathBuf,
    /// The .safetensors file to write.
    output: std::path::PathBuf,
    /// Check the weights against this zoo model first (resnet18, …, efficientnet-lite0).
    #[arg(long)]
    model: Option<String>,
}

fn convert(args: &ConvertArgs) -> Result<()> {
    let kind = args
        .model
        .as_deref()
        .map(str::parse::<extremal_models::ModelKind>)
        .transpose()?;
    let c = extremal_models::convert(&args.input, &args.output, kind)?;
    let checked = c
        .checked
        .map(|k| format!(", checked against {}", k.name()))
        .unwrap_or_default();
    out(&format!(
        "{} tensors, {} values{checked} -> {}\n",
        c.tensors,
        c.parameters,
        args.output.display()
    ));
    Ok(())
}

#[derive(Args)]
struct LayersArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Show only this site (a native name or an alias such as layer4), resolved.
    #[arg(long)]
    layer: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ClassifyArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    inputs: InputsArgs,
    /// A folder run: write DIR/results.jsonl, one record per image (a rerun skips the images
    /// it holds).
    #[arg(long, value_name = "DIR")]
    out: Option<std::path::PathBuf>,
    /// How many classes to show.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn layers(args: &LayersArgs) -> Result<()> {
    let dev = device(&args.model.device)?;
    // Shapes do not depend on the weights: without --weights, nothing is downloaded.
    let model = args.model.open(true)?;
    let size = model.preprocess().size;
    let x = Tensor::zeros((1, 3, size, size), DType::F32, &dev)?;
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    let mut record = |site: &str, t: Tensor| -> extremal_hook::Result<Tensor> {
        shapes.push((site.to_string(), t.dims().to_vec()));
        Ok(t)
    };
    model.forward_hooked(&x, &mut record)?;
    if let Some(name) = &args.layer {
        let native = model.resolve(name)?;
        shapes.retain(|(s, _)| *s == native);
    }
    let aliases = model.aliases();
    let alias_of = |site: &str| -> Vec<String> {
        aliases
            .iter()
            .filter(|(_, n)| n == site)
            .map(|(a, _)| a.clone())
            .collect()
    };
    if args.json {
        let sites: Vec<_> = shapes
            .iter()
            .map(|(s, d)| json!({"site": s, "shape": d, "aliases": alias_of(s)}))
            .collect();
        let aliases: serde_json::Map<String, serde_json::Value> =
            aliases.iter().map(|(a, n)| (a.clone(), json!(n))).collect();
        out(&format!(
            "{}\n",
            json!({"model": model.name(), "input": [1, 3, size, size], "sites": sites, "aliases": aliases})
        ));
    } else {
        let width = shapes.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
        let mut text = String::new();
        for (s, d) in &shapes {
            let a = alias_of(s);
            let a = if a.is_empty() {
                String::new()
            } else {
                format!("  (= {})", a.join(", "))
            };
            let d: Vec<String> = d.iter().map(|v| v.to_string()).collect();
            text.push_str(&format!("{s:<width$}  {}{a}\n", d.join("x")));
        }
        out(&text);
    }
    Ok(())
}

fn classify(args: &ClassifyArgs) -> Result<()> {
    if args.top == 0 {
        bail!("--top 0 shows nothing; give 1 or more");
    }
    let Some(input) = args.inputs.single() else {
        return classify_folder(args);
    };
    if args.out.is_some() {
        bail!("--out is for folder runs (several inputs or a folder); one image prints its classes");
    }
    let (model, x) = args.model.load_with_image(&input, "classify")?;
    let (preds, logits) = model.classify(&x, args.top)?;
    if args.json {
        let logits = logits.squeeze(0)?.to_vec1::<f32>()?;
        let mut value = top_json(&preds[0]);
        value["model"] = json!(model.name());
        value["logits"] = json!(logits);
        out(&format!("{value}\n"));
    } else {
        out(&top_text(&preds[0]));
    }
    Ok(())
}

/// `{"top": [{class, label, prob, logit}, …]}`.
fn top_json(preds: &[extremal_models::Prediction]) -> serde_json::Value {
    let top: Vec<_> = preds
        .iter()
        .map(|p| json!({"class": p.class, "label": p.label, "prob": p.prob, "logit": p.logit}))
        .collect();
    json!({ "top": top })
}

fn top_text(preds: &[extremal_models::Prediction]) -> String {
    preds
        .iter()
        .map(|p| format!("{:>4}  {:>6.2}%  {}\n", p.class, 100.0 * p.prob, p.label))
        .collect()
}

/// `classify` over several inputs or folders: one record per image, printed (JSON lines with
/// --json) and, with --out, appended to results.jsonl.
fn classify_folder(args: &ClassifyArgs) -> Result<()> {
    let mut folder = folder::Folder::<serde_json::Value>::open(&args.inputs, args.out.as_deref())?;
    let model = args.model.load()?;
    let total = folder.mine();
    let failed = folder.each(
        &args.model,
        &model,
        &args.inputs,
        args.inputs.batch,
        "classify",
        |items, x| {
            let (preds, _) = model.classify(x, args.top)?;
            let mut records = Vec::new();
            let mut text = String::new();
            for (item, p) in items.iter().zip(&preds) {
                let mut r = json!({"image": item.name, "model": model.name()});
                r["top"] = top_json(p)["top"].take();
                if args.json {
                    text.push_str(&format!("{r}\n"));
                } else {
                    text.push_str(&format!("{}\n{}", item.name, top_text(p)));
                }
                records.push(r);
            }
            out(&text);
            Ok(records)
        },
    )?;
    if let Some(run) = &folder.run {
        if !args.json {
            eprintln!(
                "{} of {total} images recorded in {}",
                run.records()?.len(),
                run.results().display()
            );
        }
    }
    folder::finish(failed, total)
}

/// `--target`, checked against the model's classes, or the top-1 class of `logits` `(1, classes)`.
fn class_target(logits: &Tensor, target: Option<usize>) -> Result<usize> {
    let classes = logits.dim(1)?;
    Ok(match target {
        Some(t) if t >= classes => bail!(
            "--target {t} is outside the model's {classes} classes (0…{})",
            classes - 1
        ),
        Some(t) => t,
        None => logits.squeeze(0)?.argmax(0)?.to_scalar::<u32>()? as usize,
    })
}

/// Writes to stdout; a closed pipe (`extremal layers | head`) ends the output quietly.
/// Any other failure to write stdout (a full disk: `> /dev/full`) is kept here and makes the
/// command fail at its end.
static STDOUT_ERROR: std::sync::OnceLock<std::io::Error> = std::sync::OnceLock::new();

fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = STDOUT_ERROR.set(e);
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Layers(a) => layers(a),
        Command::Classify(a) => classify(a),
        Command::Channels(a) => channels::run(a),
        Command::Attribute(a) => attribute::run(a),
        Command::Invert(a) => invert::run(a),
        Command::Visualize(a) => visualize::run(a),
        Command::Exemplars(a) => exemplars::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Convert(a) => convert(a),
    }
}

/// Every optimisation step allocates and frees the same large activations. An allocator that
/// returns freed memory to the kernel makes each step fault fresh zeroed pages in again (about
/// 5 % of an inversion step at `layer2`, measured with glibc's `mmap` threshold). Keep them.
fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc's `mimalloc.h` (v2 and v3): -1 never purges.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one of mimalloc's options, which it reads when it next considers purging.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}

/// The error and its causes on one line, each said once (an OS error wrapped transparently
/// would otherwise repeat itself: "No space left on device: No space left on device").
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// mimalloc: each thread allocates from pages of its own and frees another thread's blocks
/// cheaply. Every command runs with the pool's threads polling ([`extremal_ops::polling`]);
/// with glibc's malloc, an arena per thread then made ResNet-50's batch-3 pass slow in some
/// processes and one arena took the channel search's gain away (`docs/reference.md`, "Every
/// command polls, with mimalloc"). Built without its requests for transparent huge pages
/// (`no_thp`): a fault in such a region may compact memory first, which slowed ResNet-50's
/// `attribute` by a third right after another program had used much memory.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // SAFETY: no other thread exists yet.
    unsafe { extremal_ops::one_elementwise_thread() };
    // candle attaches a backtrace to its errors when RUST_BACKTRACE is set; users get short
    // errors unless they ask for backtraces with EXTREMAL_BACKTRACE=1.
    if std::env::var_os("EXTREMAL_BACKTRACE").is_none() {
        std::env::remove_var("RUST_BACKTRACE");
        std::env::remove_var("RUST_LIB_BACKTRACE");
    }
    keep_freed_memory();
    outdir::install_interrupt_cleanup();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("error: {}", args::usage_error(&e));
            return ExitCode::from(2);
        }
    };
    // Every command is mostly short parallel sections (batch-1 and batch-3 passes): the pool's
    // other threads poll for them instead of sleeping (`ops::polling`; with the allocator above).
    match extremal_ops::on_thread_pool(|| extremal_ops::polling(|| run(cli))) {
        Ok(()) if STDOUT_ERROR.get().is_some() => {
            eprintln!("error: cannot write the output: {}", STDOUT_ERROR.get().expect("set"));
            ExitCode::FAILURE
        }
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
