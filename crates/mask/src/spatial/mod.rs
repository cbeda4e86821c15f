//! Extremal perturbation (Fong, Patrick & Vedaldi, ICCV 2019): spatial masks through the one
//! engine ([`crate::engine`]). At the input (the default site) it is TorchRay's method; at an
//! inner site the mask selects positions of the site's activation.
//!
//! - [`Pyramid`]: the input perturbed at increasing strength (Gaussian blur or fade), and the
//!   blend a mask selects from it.
//! - [`MaskGenerator`]: smooth masks from a coarse parameter grid (a soft-max pooling of
//!   radial kernels), as one custom op with its own backward.
//! - [`PyramidMask`] (the input) and [`SpatialMask`] (an inner site): the two spatial
//!   parameterisations.
//! - [`extremal_perturbation`]: several areas optimised in one batch.

mod generator;
mod kernels;
mod params;
mod pyramid;

use candle_core::Tensor;
use extremal_hook::Network;
use extremal_ops::{gaussian_blur, resize_bilinear, Adam, Border, Optimiser, Sgd};
use serde::{Deserialize, Serialize};

pub use generator::MaskGenerator;
pub use params::{PyramidMask, SpatialMask};
pub use pyramid::Pyramid;

use crate::channels::{ChannelContribution, ChannelSite};
use crate::engine::{optimise, AreaWeight, ClassEvidence, Evidence, History, MaskParameterisation, Objective, Site};
use crate::{reward, Error, Game, Result, Reward, TieOrder};

/// How the site is perturbed where the mask is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Perturbation {
    /// At the input, Gaussian blur up to `max_blur` pixels of standard deviation; at an inner
    /// site, each channel's spatial mean (the limit of blurring it).
    #[default]
    Blur,
    /// Fade to zero (black in normalised space at the input).
    Fade,
}

impl std::str::FromStr for Perturbation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "blur" => Ok(Perturbation::Blur),
            "fade" => Ok(Perturbation::Fade),
            o => Err(Error::Invalid(format!("unknown perturbation `{o}`; use blur or fade"))),
        }
    }
}

/// The values of an f32 tensor.
pub(crate) fn f32_values(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Settings of [`extremal_perturbation`]; the defaults are TorchRay's.
#[derive(Debug, Clone)]
pub struct ExtremalConfig {
    /// The site whose activation is masked: `None` (or `"input"`) for the image (TorchRay's
    /// method), else a name or an alias; there the mask has one value per position and
    /// [`Perturbation`] replaces the masked-out positions by the channel's spatial mean
    /// (blur) or zero (fade). Pyramid, step, sigma, jitter and the SGD schedule apply to the
    /// input only: an inner site's mask starts at 0.5 and takes Adam (lr 0.05), the reward
    /// relative to the unperturbed one and an area weight ramped 0 → 100 (channel masks: 0 → 10).
    pub site: Option<String>,
    /// Target areas, fractions of the image; one mask each, optimised in one batch.
    pub areas: Vec<f64>,
    /// Iterations.
    pub iterations: usize,
    /// Pyramid levels.
    pub levels: usize,
    /// Mask parameter step, pixels.
    pub step: usize,
    /// Mask kernel scale, pixels.
    pub sigma: f64,
    /// Largest blur of the pyramid (σ, pixels).
    pub max_blur: f64,
    /// Flip the perturbed images left–right on even iterations.
    pub jitter: bool,
    /// Preserve, delete or dual.
    pub game: Game,
    /// Simple or contrastive.
    pub reward: Reward,
    /// Blur or fade.
    pub perturbation: Perturbation,
    /// If positive, blur the final masks with σ = `smooth`·min(H, W).
    pub smooth: f64,
    /// SGD learning rate.
    pub learning_rate: f64,
    /// SGD momentum (and dampening).
    pub momentum: f64,
    /// Initial weight of the area term; it grows by `area_growth` every iteration.
    pub area_weight: f64,
    /// Growth factor of the area term's weight.
    pub area_growth: f64,
}

impl Default for ExtremalConfig {
    fn default() -> Self {
        Self {
            site: None,
            areas: vec![0.1],
            iterations: 800,
            levels: 8,
            step: 7,
            sigma: 21.0,
            max_blur: 20.0,
            jitter: true,
            game: Game::Preserve,
            reward: Reward::Simple,
            perturbation: Perturbation::Blur,
            smooth: 0.0,
            learning_rate: 0.01,
            momentum: 0.9,
            area_weight: 300.0,
            area_growth: 1.0035,
        }
    }
}

/// What [`extremal_perturbation`] returns.
#[derive(Debug, Clone)]
pub struct ExtremalResult {
    /// The visible masks, `(K, 1, H, W)` at the input or `(K, 1, h, w)` at the site's
    /// resolution, in the order of the areas: those of the last iteration (before its update,
    /// as TorchRay returns them), smoothed if asked.
    pub masks: Tensor,
    /// The native name of the site.
    pub site: String,
    /// Per iteration, per area: the reward and the area penalty.
    pub history: History,
    /// The reward of each area at the last iteration.
    pub rewards: Vec<f64>,
    /// The target class.
    pub target: usize,
    /// The reward of the unperturbed input.
    pub unperturbed_reward: f64,
}

/// What a run of [`extremal_perturbation`] reports (`extremal attribute --json`, less the
/// command's own keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtremalSummary {
    /// The site, when it is not the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The target class.
    pub target: usize,
    /// The game.
    pub game: Game,
    /// The reward.
    pub reward_kind: Reward,
    /// Iterations.
    pub iterations: usize,
    /// The reward of the unperturbed input.
    pub unperturbed_reward: f64,
    /// One entry per area.
    pub areas: Vec<AreaSummary>,
}

/// One area's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AreaSummary {
    /// The target area.
    pub area: f64,
    /// The mean of the visible mask.
    pub visible_area: f64,
    /// The reward at the last iteration.
    pub reward: f64,
}

/// Extremal perturbation: for each area `a`, a smooth mask of about `a·H·W` pixels that
/// maximises the game's reward for `target` when the image is seen through it (the rest of
/// the image perturbed by the pyramid). `progress(iteration)` is called after each step.
/// With [`ExtremalConfig::site`] the mask is at that site's resolution instead and perturbs
/// its activation ([`SpatialMask`]).
///
/// At the input, step for step TorchRay's algorithm, down to the order in which its area
/// constraint ranks tied mask values ([`TieOrder::Torch`]). The optimisation is chaotic,
/// though: a change below float precision (one ulp at a few pixels, another thread count)
/// moves TorchRay's own final masks as far as the two tools are apart
/// (`python3 scripts/torchray_compare.py --noise-floor`).
///
/// # Shapes
/// - `input`: `(1, 3, H, W)`, normalised as the network expects.
pub fn extremal_perturbation(
    net: &dyn Network,
    input: &Tensor,
    target: usize,
    cfg: &ExtremalConfig,
    progress: &mut dyn FnMut(usize),
) -> Result<ExtremalResult> {
    check(input, cfg)?;
    let k = cfg.areas.len();
    let site = Site::new(net, input, cfg.site.as_deref().unwrap_or("input"))?;
    let unperturbed = crate::scalar(&reward(&site.output(site.activation())?, target, cfg.reward)?)?;
    let evidence = ClassEvidence {
        site: &site,
        target,
        reward: cfg.reward,
    };
    let (masks, history) = if site.name() == "input" {
        let param = PyramidMask::new(input, k, cfg)?;
        let mut sgd = Sgd::new(cfg.learning_rate, cfg.momentum, cfg.momentum);
        run(&evidence, &param, &torchray(cfg, 1.0), &mut sgd, cfg, progress)?
    } else {
        // TorchRay's schedule is calibrated for its smooth image mask (thousands of values
        // behind a generator); a mask with one value per position of a small activation
        // takes the channel masks' recipe instead: start at 0.5, Adam, the reward relative to
        // the unperturbed one, and the area weight ramped from 0 so the reward leads first —
        // to 100, which on EfficientNet-Lite0's layer2–layer4 (49 to 784 positions) ends
        // within 0.02 of the target areas in 300 iterations (10 leaves the masks twice too
        // large, 1000 costs reward).
        let objective = Objective {
            reward_scale: 1.0 / unperturbed.abs().max(1e-6),
            ties: TieOrder::Index,
            area_weight: AreaWeight::Ramp {
                end: 100.0,
                over: cfg.iterations,
            },
            ..torchray(cfg, 1.0)
        };
        let param = SpatialMask::new(site.activation(), k, cfg.perturbation)?;
        run(&evidence, &param, &objective, &mut Adam::new(0.05), cfg, progress)?
    };
    let rewards = history.last().map(|i| i.rewards.clone()).unwrap_or_default();
    Ok(ExtremalResult {
        site: site.name().to_string(),
        masks,
        history,
        rewards,
        target,
        unperturbed_reward: unperturbed,
    })
}

/// Image-space extremal perturbation that explains one kept channel instead of the class:
/// TorchRay's method with the reward [`ChannelContribution`] — channel `channel`'s masked
/// contribution `s_S(x′) − s_{S∖{k}}(x′)` on the perturbed image — scaled so that the
/// unperturbed contribution weighs as much as the class logit (TorchRay's area weight is
/// calibrated for logits). [`ExtremalResult::unperturbed_reward`] is the unperturbed
/// contribution and `rewards` the masks' (unscaled).
pub fn explain_channel(
    cs: &ChannelSite,
    set: &[usize],
    channel: usize,
    cfg: &ExtremalConfig,
    progress: &mut dyn FnMut(usize),
) -> Result<ExtremalResult> {
    let input = cs.cached().input();
    check(input, cfg)?;
    let evidence = ChannelContribution::new(cs, set, channel)?;
    let unperturbed = crate::scalar(&evidence.on(input)?)?;
    if unperturbed.abs() < 1e-6 {
        return Err(Error::Invalid(format!(
            "channel {channel} contributes nothing to the kept set on this image: there is nothing to explain"
        )));
    }
    let scale = cs.original_score().abs().max(1.0) / unperturbed.abs();
    let param = PyramidMask::new(input, cfg.areas.len(), cfg)?;
    let mut sgd = Sgd::new(cfg.learning_rate, cfg.momentum, cfg.momentum);
    let (masks, history) = run(&evidence, &param, &torchray(cfg, scale), &mut sgd, cfg, progress)?;
    let rewards = history.last().map(|i| i.rewards.clone()).unwrap_or_default();
    Ok(ExtremalResult {
        site: "input".into(),
        masks,
        history,
        rewards,
        target: cs.target(),
        unperturbed_reward: unperturbed,
    })
}

/// Checks a configuration against one input image.
fn check(input: &Tensor, cfg: &ExtremalConfig) -> Result<()> {
    let (n, _, _, _) = input.dims4()?;
    if n != 1 {
        return Err(Error::Invalid(format!(
            "extremal perturbation takes one image, got {n}"
        )));
    }
    if cfg.areas.is_empty() || cfg.areas.iter().any(|a| !(*a > 0.0 && *a <= 1.0)) {
        return Err(Error::Invalid(format!("areas must be in (0, 1], got {:?}", cfg.areas)));
    }
    if cfg.iterations == 0 {
        return Err(Error::Invalid("at least one iteration is needed".into()));
    }
    if !(cfg.smooth >= 0.0 && cfg.smooth.is_finite()) {
        return Err(Error::Invalid(format!(
            "smooth is a fraction of the image's side (0: none), got {}",
            cfg.smooth
        )));
    }
    Ok(())
}

/// TorchRay's objective: its geometric area weight, ties ranked as PyTorch's sort does.
fn torchray(cfg: &ExtremalConfig, reward_scale: f64) -> Objective {
    Objective {
        game: cfg.game,
        reward_scale,
        areas: cfg.areas.clone(),
        ties: TieOrder::Torch,
        area_weight: AreaWeight::Geometric {
            start: cfg.area_weight,
            growth: cfg.area_growth,
        },
        iterations: cfg.iterations,
    }
}

/// Runs the engine; returns the masks of the last iteration (smoothed if asked) and the
/// history.
fn run(
    evidence: &dyn Evidence,
    param: &dyn MaskParameterisation,
    objective: &Objective,
    optimiser: &mut dyn Optimiser,
    cfg: &ExtremalConfig,
    progress: &mut dyn FnMut(usize),
) -> Result<(Tensor, History)> {
    let mut last = None;
    let history = optimise(
        evidence,
        param,
        objective,
        optimiser,
        &mut |t: usize, masks: &Tensor| {
            last = Some(masks.clone());
            progress(t);
        },
    )?;
    let mut masks = last.expect("at least one iteration");
    if cfg.smooth > 0.0 {
        let (_, _, mh, mw) = masks.dims4()?;
        masks = gaussian_blur(&masks, cfg.smooth * mh.min(mw) as f64, Border::Zero)?;
    }
    Ok((masks, history))
}

impl ExtremalResult {
    /// The run's summary under the settings it was made with.
    pub fn summary(&self, cfg: &ExtremalConfig) -> Result<ExtremalSummary> {
        let masks = self.masks.to_dtype(candle_core::DType::F32)?;
        let areas = cfg
            .areas
            .iter()
            .enumerate()
            .map(|(i, &area)| {
                Ok(AreaSummary {
                    area,
                    visible_area: masks.get(i)?.mean_all()?.to_scalar::<f32>()? as f64,
                    reward: self.rewards[i],
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ExtremalSummary {
            site: (self.site != "input").then(|| self.site.clone()),
            target: self.target,
            game: cfg.game,
            reward_kind: cfg.reward,
            iterations: cfg.iterations,
            unperturbed_reward: self.unperturbed_reward,
            areas,
        })
    }

    /// The masks at the input's resolution (bilinear from a site's; unchanged at the input).
    ///
    /// # Shapes
    /// - returns: `(K, 1, H, W)`.
    pub fn masks_at(&self, h: usize, w: usize) -> Result<Tensor> {
        let (_, _, mh, mw) = self.masks.dims4()?;
        Ok(if (mh, mw) == (h, w) {
            self.masks.clone()
        } else {
            resize_bilinear(&self.masks, h, w)?
        })
    }
}
