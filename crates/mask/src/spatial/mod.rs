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
use extremal_ops::{gaussian_blur, resize_bilinear, Adam, Border, LearningRate, Optimiser, Scheduled, Sgd};
use serde::{Deserialize, Serialize};

pub use generator::MaskGenerator;
pub use params::{tie_blocks, PyramidMask, SpatialMask};
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

/// TorchRay's number of iterations.
const TORCHRAY_ITERATIONS: usize = 800;
/// The fast schedule's number of iterations: an eighth of TorchRay's network passes.
const FAST_ITERATIONS: usize = 100;
/// The fast schedule's Adam learning rate.
const FAST_LEARNING_RATE: f64 = 0.05;
/// The fraction of the fast schedule's iterations over which the area weight grows (and its
/// learning rate is held; it is annealed over the rest).
const FAST_RAMP: f64 = 0.6;
/// The fast schedule's first area weight, as a fraction of TorchRay's (300): the reward leads
/// before the area term binds.
const FAST_AREA_START: f64 = 0.3;
/// The fast schedule's last area weight, as a fraction of the one TorchRay's 800th iteration
/// reaches (about 4,900), which TorchRay applies once and the fast schedule holds.
const FAST_AREA_CEILING: f64 = 0.7;

/// How the image-space mask is optimised (at the input; an inner site's spatial mask has its
/// own recipe, see [`ExtremalConfig::site`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ExtremalSchedule {
    /// TorchRay's: 800 iterations of SGD (learning rate 0.01, momentum 0.9), the area
    /// weight `λ` grown geometrically from 300 by 0.35 % per iteration (to about 4,900).
    #[default]
    Torchray,
    /// An eighth of the network passes: 100 iterations of Adam (learning rate 0.05, held for
    /// the first 60 % of them and then annealed to zero along a half cosine), `λ` grown
    /// geometrically in those first 60 % from 90 (0.3 of TorchRay's first weight, so that
    /// the reward leads before the area term binds) to about 3,400 (0.7 of the weight
    /// TorchRay reaches at its 800th iteration) and then held, so that the masks settle at
    /// their areas. While `λ` grows, the mask's parameters are tied in 2×2 blocks (a grid
    /// of twice TorchRay's step: fewer, larger cells to place first); TorchRay's grid is free
    /// while the masks settle. Adam's step does not depend on the gradient's scale, which lets
    /// the mask cross that range of `λ` in an eighth of the steps. As Adam moves every parameter at
    /// the same rate while their gradients' signs agree, it needs a reward whose gradient
    /// outweighs the area term's at the start, as a trained network's logit does.
    /// `scripts/torchray_compare.py --fast-table` measures its rewards against TorchRay's
    /// 800-iteration runs.
    Fast,
}

impl std::str::FromStr for ExtremalSchedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "torchray" => Ok(ExtremalSchedule::Torchray),
            "fast" => Ok(ExtremalSchedule::Fast),
            o => Err(Error::Invalid(format!("unknown schedule `{o}`; use torchray or fast"))),
        }
    }
}

impl ExtremalSchedule {
    /// The schedule's default number of iterations: 800 (TorchRay's), 100 (fast).
    pub fn iterations(&self) -> usize {
        match self {
            ExtremalSchedule::Torchray => TORCHRAY_ITERATIONS,
            ExtremalSchedule::Fast => FAST_ITERATIONS,
        }
    }
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
    /// TorchRay's schedule or the fast one (at the input; `iterations` is set apart, see
    /// [`ExtremalSchedule::iterations`] and [`ExtremalConfig::fast`]).
    pub schedule: ExtremalSchedule,
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
            schedule: ExtremalSchedule::Torchray,
            iterations: TORCHRAY_ITERATIONS,
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

impl ExtremalConfig {
    /// TorchRay's settings with the fast schedule and its 100 iterations.
    pub fn fast() -> Self {
        Self {
            schedule: ExtremalSchedule::Fast,
            iterations: ExtremalSchedule::Fast.iterations(),
            ..Self::default()
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
    /// The schedule (at the input).
    #[serde(default)]
    pub schedule: ExtremalSchedule,
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
        run_at_input(&evidence, &param, cfg, 1.0, progress)?
    } else {
        if cfg.schedule == ExtremalSchedule::Fast {
            return Err(Error::Invalid(format!(
                "the fast schedule optimises image-space masks; a mask at `{}` has its own recipe: drop \
                 --schedule fast (or mask the input)",
                site.name()
            )));
        }
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
    let (masks, history) = run_at_input(&evidence, &param, cfg, scale, progress)?;
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
            ceiling: None,
        },
        iterations: cfg.iterations,
    }
}

/// The image-space mask `param` optimised under `cfg`'s schedule, the reward scaled by
/// `reward_scale`: TorchRay's SGD and geometric area weight, or the fast schedule
/// ([`ExtremalSchedule::Fast`]).
fn run_at_input(
    evidence: &dyn Evidence,
    param: &PyramidMask,
    cfg: &ExtremalConfig,
    reward_scale: f64,
    progress: &mut dyn FnMut(usize),
) -> Result<(Tensor, History)> {
    let objective = torchray(cfg, reward_scale);
    match cfg.schedule {
        ExtremalSchedule::Torchray => {
            let mut sgd = Sgd::new(cfg.learning_rate, cfg.momentum, cfg.momentum);
            run(evidence, param, &objective, &mut sgd, cfg, progress)
        }
        ExtremalSchedule::Fast => {
            // From FAST_AREA_START of TorchRay's first area weight to FAST_AREA_CEILING of its
            // 800th, crossed in the first FAST_RAMP of the iterations and then held; the
            // learning rate is held as long and then annealed to zero.
            let start = cfg.area_weight * FAST_AREA_START;
            let ceiling = cfg.area_weight * cfg.area_growth.powi(TORCHRAY_ITERATIONS as i32) * FAST_AREA_CEILING;
            let ramp = fast_ramp(cfg.iterations);
            let objective = Objective {
                area_weight: AreaWeight::Geometric {
                    start,
                    growth: (ceiling / start).powf(1.0 / (ramp - 1) as f64),
                    ceiling: Some(ceiling),
                },
                ..objective
            };
            let rate = LearningRate::Cosine {
                base: FAST_LEARNING_RATE,
                hold: ramp,
                steps: cfg.iterations,
            };
            let mut adam = Scheduled::new(Adam::new(FAST_LEARNING_RATE), rate);
            run(evidence, param, &objective, &mut adam, cfg, progress)
        }
    }
}

/// The steps of the fast schedule's area-weight ramp: the first [`FAST_RAMP`] of `iterations`
/// (at least 2).
fn fast_ramp(iterations: usize) -> usize {
    ((iterations as f64 * FAST_RAMP).round() as usize).max(2)
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
            schedule: cfg.schedule,
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
