//! Argument groups shared by several commands, the progress bars, and clap's usage errors on
//! one line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use extremal_attr::{BaselineSpec, MethodKind, MethodOptions};
use extremal_mask::{ExtremalConfig, ExtremalSchedule, Game, Perturbation, Reward};
use extremal_models::{load_input_within, Model, Preprocess};
use extremal_onnx::OnnxOptions;
use extremal_render::{Colormap, HeatStyle, ValueRange};
use indicatif::{ProgressBar, ProgressStyle};

/// Which model, with which weights, labels and preprocessing, on which device.
#[derive(Args)]
pub(crate) struct ModelArgs {
    /// Model: efficientnet-lite0, resnet18/34/50/101/152, vgg16, googlenet, or the path of an
    /// ONNX file (`model.onnx`).
    #[arg(long, default_value = "efficientnet-lite0")]
    pub(crate) model: String,
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
    pub(crate) max_pixels: u64,
    /// Device: cpu or cuda (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

/// The device named `name`.
pub(crate) fn device(name: &str) -> Result<Device> {
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
    pub(crate) fn open(&self, random_weights: bool) -> Result<Model> {
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

    /// Loads the model with its weights.
    pub(crate) fn load(&self) -> Result<Model> {
        self.open(false)
    }

    /// Loads the model and one input image (or tensor) for `command`.
    pub(crate) fn load_with_image(&self, input: &InputArgs, command: &str) -> Result<(Model, Tensor)> {
        // The input is checked before the model is loaded (its weights may be downloaded).
        if !input.input.is_file() {
            bail!("input {}: no such file", input.input.display());
        }
        let model = self.load()?;
        let x = self.image(&model, &input.input, input.keep_aspect)?;
        if x.dim(0)? != 1 {
            bail!(
                "{}: {command} takes one image, the tensor holds {}",
                input.input.display(),
                x.dim(0)?
            );
        }
        Ok((model, x))
    }

    /// One image (or tensor) preprocessed for `model`.
    pub(crate) fn image(&self, model: &Model, path: &Path, keep_aspect: bool) -> Result<Tensor> {
        Ok(load_input_within(
            path,
            model.preprocess(),
            keep_aspect,
            self.max_pixels,
            DType::F32,
            model.device(),
        )?)
    }
}

/// The photograph an input shows, `(3, H, W)` in [0, 1], at its own resolution, for
/// pictures: the image file read again, or (a `.safetensors` input) the input denormalised.
pub(crate) fn photograph(args: &ModelArgs, model: &Model, path: &Path, x: &Tensor) -> Result<Tensor> {
    let is_tensor = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    Ok(if is_tensor {
        model.preprocess().denormalise(x)?.squeeze(0)?
    } else {
        extremal_models::preprocess::read_image_within(path, args.max_pixels)?.squeeze(0)?
    })
}

/// How saliency maps are drawn over the photograph.
#[derive(Args, Debug, Clone)]
pub(crate) struct PictureArgs {
    /// The colour map of unsigned maps (signed maps, those of integrated-gradients,
    /// linear-approx and occlusion, use a blue-white-red diverging map around zero).
    #[arg(long, value_enum, default_value_t = Colormap::Viridis)]
    colormap: Colormap,
    /// The colours' weight over the photograph, in [0, 1].
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Show values beyond this percentile (of |value| for signed maps) at the end of the
    /// scale, so that a few outliers do not wash the map out (Captum's outlier_perc); 100:
    /// the whole range. Masks are always shown from 0 to 1.
    #[arg(long, default_value_t = 99.0)]
    clip_percentile: f32,
}

impl PictureArgs {
    /// The style for maps whose values sit in `range`.
    pub(crate) fn style(&self, range: ValueRange) -> Result<HeatStyle> {
        let style = HeatStyle {
            colormap: self.colormap,
            alpha: self.alpha,
            clip_percentile: self.clip_percentile,
            range,
        };
        style
            .check()
            .map_err(|e| anyhow::anyhow!("--alpha/--clip-percentile: {e}"))?;
        Ok(style)
    }
}

/// Several inputs: image files or folders of images.
#[derive(Args)]
pub(crate) struct InputsArgs {
    /// Image files (PNG, JPEG, …), .safetensors files whose tensor `input` is used as is, or
    /// folders of images (searched recursively). One file: the results of that image; several,
    /// or a folder: a folder run (see the command's description).
    #[arg(required = true)]
    pub(crate) inputs: Vec<PathBuf>,
    /// Resize the shorter side to the model's input size instead of the whole image to a square.
    #[arg(long)]
    pub(crate) keep_aspect: bool,
    /// A folder run: do share K of N of the images (K from 0; images i with i mod N = K).
    #[arg(long, default_value = "0/1")]
    pub(crate) shard: String,
    /// A folder run: images per forward pass, for the methods that batch (classify, gradient,
    /// deconvnet, guided-backprop, grad-cam, linear-approx); images of one size are batched
    /// together.
    #[arg(long, default_value_t = 16)]
    pub(crate) batch: usize,
}

impl InputsArgs {
    /// The one image of a single-image run (one input, a file), or `None` for a folder run.
    pub(crate) fn single(&self) -> Option<InputArgs> {
        match self.inputs.as_slice() {
            [one] if !one.is_dir() => Some(InputArgs {
                input: one.clone(),
                keep_aspect: self.keep_aspect,
            }),
            _ => None,
        }
    }
}

/// One input image.
#[derive(Args)]
pub(crate) struct InputArgs {
    /// An image file (PNG, JPEG, …) or a .safetensors file whose tensor `input` is used as is.
    pub(crate) input: PathBuf,
    /// Resize the shorter side to the model's input size instead of the whole image to a square.
    #[arg(long)]
    pub(crate) keep_aspect: bool,
}

/// A VOC or COCO dataset on disk.
#[derive(Args)]
pub(crate) struct DatasetArgs {
    /// The dataset directory: VOC (`Annotations/`, `JPEGImages/`, `ImageSets/Main/`) or COCO
    /// (`annotations/instances_SUBSET.json`, `SUBSET/`).
    #[arg(long)]
    pub(crate) dataset: Option<PathBuf>,
    /// The dataset's layout.
    #[arg(long, value_enum, default_value_t = extremal_eval::Format::Voc)]
    pub(crate) format: extremal_eval::Format,
    /// The subset (default: test for VOC, val2014 for COCO).
    #[arg(long)]
    pub(crate) subset: Option<String>,
}

impl DatasetArgs {
    /// The dataset at `dir`, with the reader's error in context.
    pub(crate) fn load(&self, dir: &Path) -> Result<extremal_eval::Dataset> {
        use anyhow::Context;
        extremal_eval::Dataset::load(dir, self.format, self.subset.as_deref())
            .with_context(|| format!("cannot read the {} dataset at {}", self.format.name(), dir.display()))
    }
}

/// Where the results go.
#[derive(Args)]
pub(crate) struct OutputArgs {
    /// Write the command's files into this folder (listed in the command's description); an
    /// interrupted run leaves no partial folder.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    /// With --out: also write each saved tensor as NumPy's .npy beside its .safetensors.
    #[arg(long, requires = "out")]
    pub(crate) npy: bool,
}

/// Extremal perturbation's options (`attribute`, `compare`, `evaluate`).
#[derive(Args, Debug, Clone)]
pub(crate) struct ExtremalArgs {
    /// Extremal perturbation: target areas, fractions of the image, comma separated: one mask
    /// each, in one batch (default: 0.1; for `evaluate`, TorchRay's benchmark areas,
    /// 0.025,0.05,0.1,0.2 for VOC and 0.018,0.025,0.05,0.1 for COCO).
    #[arg(long, value_delimiter = ',')]
    areas: Option<Vec<f64>>,
    /// Extremal perturbation: how the mask is optimised: TorchRay's schedule (800 SGD
    /// iterations) or the fast one (100 Adam iterations).
    #[arg(long, value_enum, default_value_t = ExtremalSchedule::Torchray)]
    schedule: ExtremalSchedule,
    /// Extremal perturbation: iterations (default: the schedule's, 800 for torchray, 100 for
    /// fast).
    #[arg(long)]
    iterations: Option<usize>,
    /// Extremal perturbation: which part of the image the reward judges.
    #[arg(long, value_enum, default_value_t = Game::Preserve)]
    game: Game,
    /// Extremal perturbation: the target logit (simple) or its margin over the best other
    /// class (contrastive).
    #[arg(long, value_enum, default_value_t = Reward::Simple)]
    reward: Reward,
    /// Extremal perturbation: what replaces the masked-out image (at an inner --layer: the
    /// channel's spatial mean for blur, zero for fade).
    #[arg(long, value_enum, default_value_t = Perturbation::Blur)]
    perturbation: Perturbation,
    /// Extremal perturbation: blur the final masks with σ = S·min(H, W) (default 0, off; for
    /// `evaluate`, TorchRay's benchmark 0.09).
    #[arg(long)]
    smooth: Option<f64>,
}

impl ExtremalArgs {
    /// The configuration, with `areas` and `smooth` defaulting to the given values.
    pub(crate) fn config(&self, areas: Vec<f64>, smooth: f64) -> Result<ExtremalConfig> {
        let areas = self.areas.clone().unwrap_or(areas);
        if let Some(bad) = areas.iter().find(|a| !(**a > 0.0 && **a <= 1.0)) {
            bail!("--areas: {bad} is not a fraction of the image; use values in (0, 1], e.g. --areas 0.05,0.1,0.2");
        }
        Ok(ExtremalConfig {
            areas,
            schedule: self.schedule,
            iterations: self.iterations.unwrap_or(self.schedule.iterations()),
            game: self.game,
            reward: self.reward,
            perturbation: self.perturbation,
            smooth: self.smooth.unwrap_or(smooth),
            ..Default::default()
        })
    }
}

/// The methods' own options (`attribute`, `compare`, `evaluate`).
#[derive(Args, Debug, Clone)]
pub(crate) struct MethodArgs {
    /// The site (a name or an alias) of grad-cam and linear-approx (default `layer4`), of the
    /// excitation backprops (default `layer3`), TorchRay's benchmark settings; and of
    /// extremal perturbation (default: the input image).
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
    #[command(flatten)]
    pub(crate) extremal: ExtremalArgs,
}

impl MethodArgs {
    /// The library's options for `model`, with extremal perturbation's areas and smoothing
    /// defaulting to `areas` and `smooth`.
    pub(crate) fn options(&self, model: &Model, areas: Vec<f64>, smooth: f64) -> Result<MethodOptions> {
        let pre = model.preprocess();
        Ok(MethodOptions {
            layer: self.layer.clone(),
            rise_masks: self.rise_masks,
            rise_cells: self.rise_cells,
            rise_p: self.rise_p,
            seed: self.seed,
            occlusion_window: self.occlusion_window,
            occlusion_stride: self.occlusion_stride,
            ig_steps: self.ig_steps,
            ig_baseline: self.ig_baseline.parse::<BaselineSpec>()?,
            normalisation: (pre.mean, pre.std),
            extremal: self.extremal.config(areas, smooth)?,
        })
    }

    /// The method `kind`.
    pub(crate) fn method(
        &self,
        kind: MethodKind,
        model: &Model,
        areas: Vec<f64>,
        smooth: f64,
    ) -> Result<Box<dyn extremal_attr::Method>> {
        Ok(extremal_attr::method(kind, &self.options(model, areas, smooth)?)?)
    }
}

/// A progress bar of `len` steps: `label [====>    ] pos/len elapsed {extra}`.
pub(crate) fn progress_bar(len: u64, label: &str, extra: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{label} [{{bar:30}}] {{pos}}/{{len}} {{elapsed_precise}}{extra}"
        ))
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

/// A spinner with `message`, ticking until it is finished.
pub(crate) fn spinner(message: String) -> ProgressBar {
    let s = ProgressBar::new_spinner();
    s.set_message(message);
    s.enable_steady_tick(std::time::Duration::from_millis(200));
    s
}

/// A usage error of clap's on one line: its first line, the values it accepts, and its tip.
pub(crate) fn usage_error(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let rendered = e.render().to_string();
    let mut line = rendered
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    if let Some(ContextValue::Strings(values)) = e.get(ContextKind::ValidValue) {
        line.push_str(&format!("; use {}", values.join(", ")));
    }
    for kind in [ContextKind::SuggestedArg, ContextKind::SuggestedValue] {
        match e.get(kind) {
            Some(ContextValue::String(s)) => line.push_str(&format!(" (did you mean {s}?)")),
            Some(ContextValue::Strings(s)) => line.push_str(&format!(" (did you mean {}?)", s.join(" or "))),
            _ => {}
        }
    }
    line
}
