//! The one optimisation engine of every extremal mask: a [`MaskParameterisation`] turns
//! parameters into masks and masks into the site's perturbed activation; [`optimise`] runs the
//! game, the reward, the area constraint and its weight schedule on it with any
//! [`Optimiser`]. A new kind of mask is a new parameterisation, not a new loop.
//!
//! Each iteration minimises `λ_t · R_a(m) − s · r(m)` where `r` is the game's reward of the
//! masked site, `R_a` the sorted-mask area constraint ([`area_penalty`]), `λ_t` the
//! [`AreaWeight`] schedule and `s` a reward scale.

use candle_core::{DType, Tensor, Var};
use extremal_hook::{Hooks, Network, Prefix};
use extremal_ops::Optimiser;
use serde::{Deserialize, Serialize};

use crate::{area_penalty, reward, Error, Game, Result, Reward, TieOrder};

/// A site of a network with its prefix computed once: every evaluation of a mask re-runs only
/// the suffix. The input is a site too (`"input"`): then the suffix is the whole network.
pub struct Site<'a> {
    net: &'a dyn Network,
    input: Tensor,
    prefix: Prefix,
}

impl<'a> Site<'a> {
    /// Runs the prefix of `net` on `x` up to `site` (a name or an alias).
    ///
    /// # Shapes
    /// - `x`: `(1, C, H, W)`.
    pub fn new(net: &'a dyn Network, x: &Tensor, site: &str) -> Result<Self> {
        if x.dim(0)? != 1 {
            return Err(Error::Invalid(format!(
                "extremal masks take one image, got a batch of {}",
                x.dim(0)?
            )));
        }
        Ok(Self {
            net,
            input: x.detach(),
            prefix: net.prefix(x, site)?,
        })
    }

    /// The input the prefix was run on.
    pub fn input(&self) -> &Tensor {
        &self.input
    }

    /// The native site name.
    pub fn name(&self) -> &str {
        self.prefix.site()
    }

    /// The network.
    pub fn net(&self) -> &'a dyn Network {
        self.net
    }

    /// The activation at the site (detached).
    pub fn activation(&self) -> &Tensor {
        self.prefix.activation()
    }

    /// The network's output with `activation` in place of the site's.
    ///
    /// # Shapes
    /// - `activation`: the site's shape with any batch size `B`; returns `(B, classes)`.
    pub fn output(&self, activation: &Tensor) -> Result<Tensor> {
        Ok(self.net.suffix(&self.prefix, activation, &mut Hooks::new())?)
    }
}

/// What a mask's reward reads from the network: one value per item of a batch of perturbed
/// activations at the site. [`ClassEvidence`] is the class's (the target logit, or its margin
/// over the others); the channel search's conditional explanations read one channel's
/// contribution instead.
pub trait Evidence {
    /// The evidence of each item.
    ///
    /// # Shapes
    /// - `activation`: the site's shape with batch `B`; returns `(B,)`.
    fn evidence(&self, activation: &Tensor) -> Result<Tensor>;
}

/// The class evidence at a cached site: the suffix's output read by a [`Reward`].
pub struct ClassEvidence<'s, 'a> {
    /// The cached site.
    pub site: &'s Site<'a>,
    /// The class.
    pub target: usize,
    /// Simple or contrastive.
    pub reward: Reward,
}

impl Evidence for ClassEvidence<'_, '_> {
    fn evidence(&self, activation: &Tensor) -> Result<Tensor> {
        reward(&self.site.output(activation)?, self.target, self.reward)
    }
}

/// The masks a parameterisation holds, and what the area constraint sees of them.
pub struct MaskValues {
    /// The masks the game applies, `(K, …)`, values in [0, 1].
    pub masks: Tensor,
    /// The values the area constraint ranks, `(K, n)` (e.g. with a margin around the visible
    /// mask).
    pub area: Tensor,
}

/// How a mask is parameterised at a site: parameters → masks, masks → perturbed activation.
pub trait MaskParameterisation {
    /// The optimised parameters.
    fn params(&self) -> &Var;

    /// The masks of the current parameters (differentiable with respect to them).
    fn masks(&self) -> Result<MaskValues>;

    /// The site's activation seen through a batch of masks (those of [`Self::masks`], their
    /// complements, or both): where a mask is 1 the activation is kept, where 0 it is
    /// perturbed. `iteration` lets a parameterisation vary its perturbation (TorchRay's
    /// left–right jitter).
    ///
    /// # Shapes
    /// - `masks`: `(B, …)` as [`MaskValues::masks`]; returns the site's shape with batch `B`.
    fn perturb(&self, masks: &Tensor, iteration: usize) -> Result<Tensor>;

    /// Brings the parameters back into their domain after step `iteration` (from 0; default:
    /// clamp to [0, 1]).
    fn project(&self, _iteration: usize) -> Result<()> {
        let p = self.params();
        p.set(&p.as_tensor().clamp(0.0, 1.0)?)?;
        Ok(())
    }
}

/// The schedule of the area constraint's weight `λ_t`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AreaWeight {
    /// `λ_t = start · growth^t`, multiplied step by step (TorchRay's), held at `ceiling` once
    /// it reaches it.
    Geometric {
        /// `λ_0`.
        start: f64,
        /// Factor per iteration.
        growth: f64,
        /// The largest weight, held once reached (TorchRay's: none).
        ceiling: Option<f64>,
    },
    /// `λ_t = end · t / over` up to `over` iterations, then `end`.
    Ramp {
        /// The final weight.
        end: f64,
        /// Iterations to reach it.
        over: usize,
    },
}

impl AreaWeight {
    /// The weight of each of `iterations` iterations.
    pub fn weights(&self, iterations: usize) -> Vec<f64> {
        match *self {
            AreaWeight::Geometric { start, growth, ceiling } => {
                let mut w = start;
                (0..iterations)
                    .map(|_| {
                        let now = ceiling.map_or(w, |c| w.min(c));
                        w *= growth;
                        now
                    })
                    .collect()
            }
            AreaWeight::Ramp { end, over } => (0..iterations)
                .map(|t| if t >= over { end } else { end * t as f64 / over as f64 })
                .collect(),
        }
    }
}

/// What the engine optimises: the game and the area constraint (the evidence the reward reads
/// is an [`Evidence`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    /// Preserve, delete or dual.
    pub game: Game,
    /// `s`: the reward's factor in the loss.
    pub reward_scale: f64,
    /// The target area of each mask (fractions of the area view's values).
    pub areas: Vec<f64>,
    /// How the area constraint ranks tied values.
    pub ties: TieOrder,
    /// The schedule of `λ_t`.
    pub area_weight: AreaWeight,
    /// Iterations.
    pub iterations: usize,
}

/// One iteration of the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Iteration {
    /// The game's reward of each mask.
    pub rewards: Vec<f64>,
    /// The area penalty `R_a` of each mask.
    pub penalties: Vec<f64>,
    /// `λ_t`.
    pub area_weight: f64,
}

/// Every iteration of a run, in order.
pub type History = Vec<Iteration>;

/// What a caller does around the engine's steps: progress, tracking the best discrete mask
/// seen (the channel search's top-K sets), early checks.
pub trait Observer {
    /// Before iteration `t`'s step, with the parameters it starts from.
    fn before_step(&mut self, _t: usize, _params: &Var) -> Result<()> {
        Ok(())
    }

    /// After iteration `t`'s step: `masks` are the masks the step was computed on (before
    /// the update), detached.
    fn after_step(&mut self, _t: usize, _masks: &Tensor) -> Result<()> {
        Ok(())
    }
}

impl<F: FnMut(usize, &Tensor)> Observer for F {
    fn after_step(&mut self, t: usize, masks: &Tensor) -> Result<()> {
        self(t, masks);
        Ok(())
    }
}

/// The game's batch of masks: the masks (preserve), their complements (delete), or both.
fn game_masks(masks: &Tensor, game: Game) -> Result<Tensor> {
    Ok(match game {
        Game::Preserve => masks.clone(),
        Game::Delete => (1.0 - masks)?,
        Game::Dual => Tensor::cat(&[masks.clone(), (1.0 - masks)?], 0)?,
    })
}

/// The game's reward of `k` masks from the rewards of its batch ([`game_masks`]).
fn game_reward(r: Tensor, game: Game, k: usize) -> Result<Tensor> {
    Ok(match game {
        Game::Preserve => r,
        Game::Delete => r.neg()?,
        Game::Dual => (r.narrow(0, 0, k)? - r.narrow(0, k, k)?)?,
    })
}

/// The game's reward of a batch of masks, differentiable with respect to them: `perturb`
/// turns the game's batch of masks into the perturbed activation (a parameterisation's
/// [`MaskParameterisation::perturb`] at one iteration), `evidence` reads it.
///
/// # Shapes
/// - `masks`: `(K, …)`; returns `(K,)`.
pub fn game_scores(
    evidence: &dyn Evidence,
    perturb: &dyn Fn(&Tensor) -> Result<Tensor>,
    masks: &Tensor,
    game: Game,
) -> Result<Tensor> {
    let k = masks.dim(0)?;
    let seen = perturb(&game_masks(masks, game)?)?;
    game_reward(evidence.evidence(&seen)?, game, k)
}

/// Runs the engine: `objective.iterations` steps of `optimiser` on `param`'s parameters, the
/// reward read by `evidence`, with `observer` called around each step. The parameters are left
/// at their last (projected) values; returns the history.
pub fn optimise(
    evidence: &dyn Evidence,
    param: &dyn MaskParameterisation,
    objective: &Objective,
    optimiser: &mut dyn Optimiser,
    observer: &mut dyn Observer,
) -> Result<History> {
    if objective.iterations == 0 {
        return Err(Error::Invalid(
            "at least one iteration is needed (--iterations 1 or more)".into(),
        ));
    }
    let weights = objective.area_weight.weights(objective.iterations);
    let mut history = Vec::with_capacity(objective.iterations);
    for (t, &lambda) in weights.iter().enumerate() {
        observer.before_step(t, param.params())?;
        let MaskValues { masks, area } = param.masks()?;
        let r = game_scores(evidence, &|m| param.perturb(m, t), &masks, objective.game)?;
        let penalty = area_penalty(&area, &objective.areas, objective.ties)?;
        let loss = ((&penalty * lambda)? - (&r * objective.reward_scale)?)?.sum_all()?;
        let rewards = r.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let penalties = penalty.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        if rewards.iter().any(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "the reward became {rewards:?} at iteration {t}: the network's output is not finite"
            )));
        }
        let grads = loss.backward()?;
        let g = grads
            .get(param.params().as_tensor())
            .ok_or_else(|| Error::Invalid("no gradient reached the mask parameters".into()))?;
        optimiser.step(param.params(), g)?;
        param.project(t)?;
        history.push(Iteration {
            rewards,
            penalties,
            area_weight: lambda,
        });
        observer.after_step(t, &masks.detach())?;
    }
    Ok(history)
}
