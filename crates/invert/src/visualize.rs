//! Feature visualization (Olah et al., Distill 2017; Lucid's and Lucent's `render_vis`): an
//! image optimised from noise to excite a channel, a neuron or a direction at a site.

use std::str::FromStr;

use candle_core::{DType, Tensor, D};
use extremal_hook::Network;
use extremal_ops::random::SeededRng;
use extremal_ops::Adam;

use crate::optimise::{optimise_image, Schedule};
use crate::param::{ImageParam, Parameterisation};
use crate::transform::Robustness;
use crate::{Error, Result};

/// What a visualization maximises at the site, for one image of the batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Objective {
    /// The mean activation of channel `k` over all positions (Lucid's `channel`).
    Channel(usize),
    /// Channel `k` at the centre position of the activation (Lucid's `neuron`).
    Neuron(usize),
    /// The cosine similarity between this direction in channel space and the activation,
    /// averaged over positions (Lucid's `direction`).
    Direction(Vec<f64>),
}

/// The kind of [`Objective`] a command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ObjectiveKind {
    /// [`Objective::Channel`].
    #[default]
    Channel,
    /// [`Objective::Neuron`].
    Neuron,
    /// [`Objective::Direction`].
    Direction,
}

impl FromStr for ObjectiveKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "channel" => Ok(Self::Channel),
            "neuron" => Ok(Self::Neuron),
            "direction" => Ok(Self::Direction),
            other => Err(Error::Invalid(format!(
                "unknown objective `{other}`; use channel, neuron or direction"
            ))),
        }
    }
}

impl Objective {
    /// A short name, for file names and reports: `channel-12`, `neuron-12`, `direction`.
    pub fn label(&self) -> String {
        match self {
            Objective::Channel(k) => format!("channel-{k}"),
            Objective::Neuron(k) => format!("neuron-{k}"),
            Objective::Direction(_) => "direction".into(),
        }
    }

    /// The channel the objective is about, if it is one channel.
    pub fn channel(&self) -> Option<usize> {
        match self {
            Objective::Channel(k) | Objective::Neuron(k) => Some(*k),
            Objective::Direction(_) => None,
        }
    }

    fn check(&self, channels: usize) -> Result<()> {
        match self {
            Objective::Channel(k) | Objective::Neuron(k) if *k >= channels => Err(Error::Invalid(format!(
                "channel {k} does not exist: the site has {channels} channels (0…{})",
                channels - 1
            ))),
            Objective::Direction(d) if d.len() != channels => Err(Error::Invalid(format!(
                "the direction has {} values but the site has {channels} channels: was it made at another layer?",
                d.len()
            ))),
            Objective::Direction(d) if d.iter().any(|v| !v.is_finite()) || d.iter().all(|v| *v == 0.0) => {
                Err(Error::Invalid("the direction must be finite and not all zeros".into()))
            }
            _ => Ok(()),
        }
    }

    /// The objective's value for one image's activation `phi` `(1, C, H, W)`: a scalar.
    fn value(&self, phi: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = phi.dims4()?;
        Ok(match self {
            Objective::Channel(k) => phi.narrow(1, *k, 1)?.mean_all()?,
            Objective::Neuron(k) => phi
                .narrow(1, *k, 1)?
                .narrow(2, h / 2, 1)?
                .narrow(3, w / 2, 1)?
                .sum_all()?,
            Objective::Direction(d) => {
                let norm = d.iter().map(|v| v * v).sum::<f64>().sqrt();
                let unit: Vec<f64> = d.iter().map(|v| v / norm).collect();
                let unit = Tensor::from_vec(unit, (1, c, 1, 1), phi.device())?.to_dtype(phi.dtype())?;
                let dot = phi.broadcast_mul(&unit)?.sum_keepdim(1)?;
                // As PyTorch's cosine similarity: the norm is kept away from zero by 1e-8.
                let len = phi.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-8, f64::MAX)?;
                (dot / len)?.mean_all()?
            }
        })
    }
}

/// Settings of a feature visualization; the defaults are Lucid's `render_vis`.
#[derive(Debug, Clone, PartialEq)]
pub struct VisualizeConfig {
    /// Optimisation steps (512).
    pub iterations: usize,
    /// Adam's learning rate (0.05).
    pub lr: f64,
    /// Image side(s), `(H, W)` (224 × 224).
    pub size: (usize, usize),
    /// Fourier (Lucid's default) or pixels; both in decorrelated colour, through a sigmoid.
    pub parameterisation: Parameterisation,
    /// The random views each step (Lucid's standard transforms).
    pub robustness: Robustness,
    /// Weight of Lucid's diversity term across the batch (0: off): the images' Gram matrices
    /// at the site are pushed apart by their cosine similarity.
    pub diversity: f64,
    /// The model's input normalisation `(x − mean) / std` applied after the transforms.
    pub mean: [f64; 3],
    /// See `mean`.
    pub std: [f64; 3],
    /// Seed of the random start and the transforms.
    pub seed: u64,
}

impl Default for VisualizeConfig {
    fn default() -> Self {
        Self {
            iterations: 512,
            lr: 0.05,
            size: (224, 224),
            parameterisation: Parameterisation::Fourier,
            robustness: Robustness::default(),
            diversity: 0.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            seed: 0,
        }
    }
}

/// The result of [`visualize`].
#[derive(Debug, Clone)]
pub struct Visualization {
    /// The native name of the site.
    pub site: String,
    /// The images in [0, 1], one per objective, rounded to 8 bits (exactly what a PNG holds).
    ///
    /// # Shapes
    /// `(K, 3, H, W)`.
    pub images: Tensor,
    /// Each objective's value on its image as written (no transform).
    pub objective: Vec<f64>,
    /// For the one-channel objectives, the channel's largest activation over positions on its
    /// image as written (`None` for a direction).
    pub peak: Vec<Option<f64>>,
    /// Per iteration, each objective's value under that step's transform.
    pub history: Vec<Vec<f64>>,
}

/// `(x − mean) / std` per colour channel.
///
/// # Shapes
/// - `x`: `(N, 3, H, W)`; returns the same shape.
fn normalise(x: &Tensor, mean: [f64; 3], std: [f64; 3]) -> Result<Tensor> {
    let dev = x.device();
    let m = Tensor::from_vec(mean.to_vec(), (1, 3, 1, 1), dev)?.to_dtype(x.dtype())?;
    let s =
        Tensor::from_vec(std.iter().map(|v| 1.0 / v).collect::<Vec<_>>(), (1, 3, 1, 1), dev)?.to_dtype(x.dtype())?;
    Ok(x.broadcast_sub(&m)?.broadcast_mul(&s)?)
}

/// Lucid's diversity penalty: the sum over pairs `i ≠ j` of the cosine similarity of the
/// images' Gram matrices at the site, divided by the batch size.
///
/// # Shapes
/// - `phi`: `(N, C, H, W)`; returns a scalar.
pub fn diversity(phi: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = phi.dims4()?;
    let flat = phi.reshape((n, c, h * w))?;
    let grams = flat.matmul(&flat.t()?)?.reshape((n, c * c))?;
    let norms = grams.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    let unit = grams.broadcast_div(&norms)?;
    // Σ_{i≠j} ⟨g_i, g_j⟩ = ‖Σ_i g_i‖² − Σ_i ‖g_i‖².
    let total = unit.sum(0)?.sqr()?.sum_all()?;
    let own = unit.sqr()?.sum_all()?;
    Ok(((total - own)? / n as f64)?)
}

/// Visualizes `objectives` at `site`: one image per objective, optimised as one batch from
/// Lucid's random start with Adam, each step seen through a random draw of
/// `cfg.robustness` and the model's normalisation, to maximise `Σ_k objective_k` (minus
/// `cfg.diversity` times [`diversity`]). Only the prefix of the network up to the site runs.
/// `progress(t, values)` is called after every step with each objective's value.
///
/// # Shapes
/// - returns: images `(K, 3, H, W)` in [0, 1] for `K = objectives.len()`, `(H, W) = cfg.size`.
pub fn visualize(
    net: &dyn Network,
    site: &str,
    objectives: &[Objective],
    cfg: &VisualizeConfig,
    dtype: DType,
    device: &candle_core::Device,
    progress: &mut dyn FnMut(usize, &[f64]),
) -> Result<Visualization> {
    if objectives.is_empty() {
        return Err(Error::Invalid("nothing to visualize: give at least one channel".into()));
    }
    if cfg.iterations == 0 {
        return Err(Error::Invalid(
            "--iterations 0: the visualization needs at least one step".into(),
        ));
    }
    let (h, w) = cfg.size;
    if !(16..=2048).contains(&h) || !(16..=2048).contains(&w) {
        return Err(Error::Invalid(format!(
            "image size {h}×{w}: give a size between 16 and 2048 pixels"
        )));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0 && cfg.diversity.is_finite() && cfg.diversity >= 0.0) {
        return Err(Error::Invalid(format!(
            "learning rate {} and diversity weight {}: the first must be positive, the second 0 or more",
            cfg.lr, cfg.diversity
        )));
    }
    if cfg.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(Error::Invalid(format!(
            "input std {:?}: every value must be positive",
            cfg.std
        )));
    }
    let native = net.resolve(site)?;
    let k = objectives.len();
    let param = ImageParam::lucid(cfg.parameterisation, (k, 3, h, w), cfg.seed, dtype, device)?;
    // The site's channels, from the start image.
    let probe = net.forward_to(&normalise(&param.image()?.detach(), cfg.mean, cfg.std)?, &native)?;
    if probe.rank() != 4 {
        return Err(Error::Invalid(format!(
            "site `{native}` has a {}-d activation: visualization needs (N, C, H, W)",
            probe.rank()
        )));
    }
    let channels = probe.dim(1)?;
    for o in objectives {
        o.check(channels)?;
    }
    let values = |phi: &Tensor| -> Result<Tensor> {
        let v = objectives
            .iter()
            .enumerate()
            .map(|(i, o)| o.value(&phi.narrow(0, i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&v, 0)?)
    };
    let mut rng = SeededRng::new(cfg.seed ^ 0x715_0A11_2E5E);
    let mut optimiser = Adam::new(cfg.lr);
    let schedule = Schedule {
        iterations: cfg.iterations,
        redirect_steps: 0,
    };
    let mut loss = |_: usize, image: &Tensor| -> Result<(Tensor, Vec<f64>)> {
        let seen = normalise(&cfg.robustness.apply(image, &mut rng)?, cfg.mean, cfg.std)?;
        let phi = net.forward_to(&seen, &native)?;
        let v = values(&phi)?;
        let mut total = v.sum_all()?.neg()?;
        if cfg.diversity > 0.0 && k > 1 {
            total = (total + (diversity(&phi)? * cfg.diversity)?)?;
        }
        Ok((total, v.to_dtype(DType::F64)?.to_vec1::<f64>()?))
    };
    let history = optimise_image(&param, &schedule, &mut optimiser, &mut loss, progress)?;
    let images = ((param.image()?.detach() * 255.0)?.round()? / 255.0)?;
    let phi = net.forward_to(&normalise(&images, cfg.mean, cfg.std)?, &native)?;
    let objective = values(&phi)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let peaks = phi
        .flatten_from(2)?
        .max(D::Minus1)?
        .to_dtype(DType::F64)?
        .to_vec2::<f64>()?;
    let peak = objectives
        .iter()
        .zip(&peaks)
        .map(|(o, p)| o.channel().map(|c| p[c]))
        .collect();
    Ok(Visualization {
        site: native,
        images,
        objective,
        peak,
        history,
    })
}
