//! `extremal`: what convolutional networks look at, from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::{Args, Parser, Subcommand};
use extremal_hook::Network;
use extremal_models::{load_input_within, Model, Preprocess};
use extremal_onnx::OnnxOptions;
use serde_json::json;

mod attribute;
mod bench;
mod channels;
mod compare;
mod evaluate;
mod invert;
mod outdir;
mod render;

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
    /// Classify an image: the top classes with labels and probabilities.
    Classify(ClassifyArgs),
    /// Channel-space extremal masks: the fewest channels at a layer that keep the class.
    Channels(ChannelsArgs),
    /// Image-space extremal perturbation: the smallest smooth region that keeps the class.
    Attribute(attribute::AttributeArgs),
    /// Feature inversion: an image whose activation at a layer matches the photograph's (or
    /// only some of its channels).
    Invert(invert::InvertArgs),
    /// Several attribution methods on one image side by side, optionally scored by deletion
    /// and insertion.
    Compare(compare::CompareArgs),
    /// Score an attribution method over a VOC or COCO dataset (pointing game, deletion,
    /// insertion): sharded, resumable; `evaluate merge` combines the shards.
    Evaluate(evaluate::EvaluateArgs),
    /// Time forward and forward + backward-to-input passes of a model.
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct ChannelsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// An image file or a .safetensors file whose tensor `input` is used as is.
    input: PathBuf,
    /// The site: a native name (`layer4.2.conv3`, `_blocks.10`) or a stage alias (`layer1`…`layer4`).
    #[arg(long)]
    layer: String,
    /// How many channels to keep (default 25 when no --sweep is given).
    #[arg(long, conflicts_with = "sweep")]
    keep: Option<usize>,
    /// Several keep values, comma separated: reports the kept score of each and the smallest
    /// keep that reaches the original score.
    #[arg(long, value_delimiter = ',')]
    sweep: Option<Vec<usize>>,
    /// Target class (default: the top-1 class).
    #[arg(long)]
    target: Option<usize>,
    /// preserve, delete or dual.
    #[arg(long, default_value = "preserve")]
    game: String,
    /// Soft-mask iterations (default: 100 for the default schedule, 300 for the paper's).
    #[arg(long)]
    iterations: Option<usize>,
    /// default (Adam, near-binary ending, swap refinement) or paper (the paper's SGD schedule, no refinement).
    #[arg(long, default_value = "default")]
    schedule: String,
    /// Skip the swap refinement of the hard set.
    #[arg(long)]
    no_refine: bool,
    /// Resize the shorter side to the model's input size instead of the whole image to a square.
    #[arg(long)]
    keep_aspect: bool,
    /// Write channels.json, saliency.png, (with --sweep) sweep.png and (with --render)
    /// render.png here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also render render.png: the image and the feature inversions of the full activation,
    /// of the kept channels and of the top channels one by one (needs --out).
    #[arg(long, requires = "out")]
    render: bool,
    /// Iterations of the inversions of --render (default: as `extremal invert`).
    #[arg(long, requires = "render")]
    render_iterations: Option<usize>,
    /// Seed of the inversions of --render.
    #[arg(long, default_value_t = 0, requires = "render")]
    render_seed: u64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ModelArgs {
    /// Model: efficientnet-lite0, resnet18/34/50/101/152, vgg16, googlenet, or the path of an
    /// ONNX file (`model.onnx`).
    #[arg(long, default_value = "efficientnet-lite0")]
    model: String,
    /// Weight file (.safetensors, .pth); default: the model's pretrained weights, fetched once.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Class names, one per line (default: ImageNet's for 1000 classes, `class i` otherwise).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Input preprocessing: a preset (imagenet, minus-one-to-one, unit) and/or size=N,
    /// mean=R/G/B, std=R/G/B, scale=S, comma separated (default: the model's own; ImageNet's
    /// at 224 for ONNX files).
    #[arg(long)]
    preprocess: Option<String>,
    /// The most pixels an input image may have, decoded or resized (a decompression bomb or a
    /// very thin image with --keep-aspect is refused, not allocated).
    #[arg(long, default_value_t = extremal_models::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Device: cpu or cuda (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
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
    /// An image file (PNG, JPEG, …) or a .safetensors file whose tensor `input` is used as is.
    input: PathBuf,
    /// How many classes to show.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Resize the shorter side to the model's input size instead of the whole image to a square.
    #[arg(long)]
    keep_aspect: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda: this build has no CUDA support; rebuild with `cargo build --release -p extremal-cli --features cuda`")
            }
            Ok(Device::new_cuda(0)?)
        }
        other => bail!("unknown device `{other}`; use cpu or cuda"),
    }
}

impl ModelArgs {
    /// Loads the model; with `random_weights`, a zoo model without `--weights` gets seeded
    /// random weights instead of downloading its own (for shapes and timings).
    fn open(&self, random_weights: bool) -> Result<Model> {
        let dev = device(&self.device)?;
        let options = OnnxOptions {
            preprocess: self.preprocess.as_deref().map(str::parse::<Preprocess>).transpose()?,
            labels: self.labels.clone(),
        };
        Ok(extremal_onnx::open_model(
            &self.model,
            self.weights.as_deref(),
            &options,
            random_weights,
            DType::F32,
            &dev,
        )?)
    }

    fn load(&self) -> Result<Model> {
        self.open(false)
    }
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

impl ModelArgs {
    /// Loads the model and one input image (or tensor) for `command`.
    fn load_with_image(&self, input: &std::path::Path, keep_aspect: bool, command: &str) -> Result<(Model, Tensor)> {
        // The input is checked before the model is loaded (its weights may be downloaded).
        if !input.is_file() {
            bail!("input {}: no such file", input.display());
        }
        let model = self.load()?;
        let x = load_input_within(
            input,
            model.preprocess(),
            keep_aspect,
            self.max_pixels,
            DType::F32,
            model.device(),
        )?;
        if x.dim(0)? != 1 {
            bail!(
                "{}: {command} takes one image, the tensor holds {}",
                input.display(),
                x.dim(0)?
            );
        }
        Ok((model, x))
    }
}

fn classify(args: &ClassifyArgs) -> Result<()> {
    if args.top == 0 {
        bail!("--top 0 shows nothing; give 1 or more");
    }
    let (model, x) = args.model.load_with_image(&args.input, args.keep_aspect, "classify")?;
    let (preds, logits) = model.classify(&x, args.top)?;
    let preds = &preds[0];
    if args.json {
        let top: Vec<_> = preds
            .iter()
            .map(|p| json!({"class": p.class, "label": p.label, "prob": p.prob, "logit": p.logit}))
            .collect();
        let logits = logits.squeeze(0)?.to_vec1::<f32>()?;
        out(&format!(
            "{}\n",
            json!({"model": model.name(), "top": top, "logits": logits})
        ));
    } else {
        let text: String = preds
            .iter()
            .map(|p| format!("{:>4}  {:>6.2}%  {}\n", p.class, 100.0 * p.prob, p.label))
            .collect();
        out(&text);
    }
    Ok(())
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
        Command::Compare(a) => compare::run(a),
        Command::Evaluate(a) => evaluate::run(a),
        Command::Bench(a) => bench::run(a),
    }
}

/// Every optimisation step allocates and frees the same large activations. glibc serves them
/// with `mmap` and returns them to the kernel on free, so each step faults fresh zeroed pages
/// in again (about 5 % of an inversion step at `layer2`). Keep them in the heap instead.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// The error and its causes on one line, each said once (an OS error wrapped transparently
/// would otherwise repeat itself: "No space left on device: No space left on device").
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

fn main() -> ExitCode {
    // candle attaches a backtrace to its errors when RUST_BACKTRACE is set; users get short
    // errors unless they ask for backtraces with EXTREMAL_BACKTRACE=1.
    if std::env::var_os("EXTREMAL_BACKTRACE").is_none() {
        std::env::remove_var("RUST_BACKTRACE");
        std::env::remove_var("RUST_LIB_BACKTRACE");
    }
    keep_freed_memory();
    outdir::install_interrupt_cleanup();
    let cli = Cli::parse();
    match run(cli) {
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
