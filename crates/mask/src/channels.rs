//! Channel-space extremal masks (SPEC §2): the smallest set of channels at a site that keeps
//! the network's decision. The prefix up to the site runs once; every step re-runs only the
//! suffix, on a batch of masked activations when several masks are evaluated together.

use candle_core::{DType, Tensor, Var};
use extremal_hook::{Hooks, Network, Prefix};

use crate::{area_penalty, reward, scalar, Adam, Error, Game, Result, Reward, Sgd, TieOrder};

/// How the soft mask is optimised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// extremal's recipe: Adam (lr 0.05) on a mask starting at 0.5, the reward scaled by the
    /// unmasked score, λ ramped linearly 0 → 10 over all iterations (100), so that the mask
    /// ends near binary; the best hard top-`keep` set seen seeds the swap refinement. (300
    /// iterations measured no better than 100 on EfficientNet-Lite0's layer3 and layer4.)
    #[default]
    Default,
    /// The paper's: a mask starting at 1, SGD (lr 0.01, momentum 0.9, no dampening), λ ramped
    /// linearly 0 → 1500 over the first 150 of 300 iterations, then held; the raw logit.
    Paper,
}

impl Schedule {
    /// The schedule's number of soft-mask iterations.
    pub fn iterations(&self) -> usize {
        match self {
            Schedule::Default => 100,
            Schedule::Paper => 300,
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "default" => Ok(Schedule::Default),
            "paper" => Ok(Schedule::Paper),
            o => Err(Error::Invalid(format!("unknown schedule `{o}`; use default or paper"))),
        }
    }
}

/// What to optimise; see [`channel_masks`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    /// How many channels to keep.
    pub keep: usize,
    /// Target class; `None` = the top-1 class of the unmasked network.
    pub target: Option<usize>,
    /// Preserve, delete or dual.
    pub game: Game,
    /// Optimisation schedule.
    pub schedule: Schedule,
    /// Iterations of the soft optimisation; `None` = the schedule's (default 100, paper 300).
    pub iterations: Option<usize>,
    /// After the soft mask, improve the hard set by swapping channels in and out while the
    /// objective rises (seeded with the best of the soft set and the two baselines).
    pub refine: bool,
    /// Masks evaluated together in one suffix pass during refinement.
    pub batch: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            keep: 25,
            target: None,
            game: Game::Preserve,
            schedule: Schedule::Default,
            iterations: None,
            refine: true,
            batch: 32,
        }
    }
}

/// The kept scores of the two heuristics a channel set is compared with.
#[derive(Debug, Clone, PartialEq)]
pub struct Baselines {
    /// The `keep` channels with the largest spatial mean activation.
    pub top_activation: f64,
    /// The `keep` channels with the largest signed `Σ_hw A_k·∂y_c/∂A_k`.
    pub activation_x_gradient: f64,
}

/// The result of [`channel_masks`].
#[derive(Debug, Clone)]
pub struct ChannelReport {
    /// Native site name.
    pub site: String,
    /// Channels at the site.
    pub channels_total: usize,
    /// Channels kept.
    pub keep: usize,
    /// Target class.
    pub target: usize,
    /// The target logit of the unmasked network.
    pub original_score: f64,
    /// The target logit with exactly the kept channels (hard mask).
    pub kept_score: f64,
    /// The target logit with the kept channels removed.
    pub deleted_score: f64,
    /// The final soft mask, one value per channel.
    pub mask: Vec<f32>,
    /// Channel indices by rank: the kept set first (ranks 1…keep), each group by mask value,
    /// ties to the lower index.
    pub ranking: Vec<usize>,
    /// The heuristics' kept scores.
    pub baselines: Baselines,
    /// Kept score of the best top-`keep` set of the soft mask (checked every 10 iterations),
    /// before refinement.
    pub soft_kept_score: f64,
    /// Accepted swaps during refinement.
    pub swaps: usize,
    /// Per iteration: (reward, area penalty) of the soft optimisation.
    pub history: Vec<(f64, f64)>,
}

/// A prefix cached at a site, with what is needed to score channel sets quickly.
pub struct ChannelSite<'a> {
    net: &'a dyn Network,
    prefix: Prefix,
    /// Number of channels.
    pub channels: usize,
    target: usize,
    /// The target logit of the unmasked suffix.
    original: f64,
}

impl<'a> ChannelSite<'a> {
    /// Runs the prefix of `net` on `x` up to `site`; `target` `None` = top-1 class.
    ///
    /// # Shapes
    /// - `x`: `(1, 3, H, W)`.
    pub fn new(net: &'a dyn Network, x: &Tensor, site: &str, target: Option<usize>) -> Result<Self> {
        if x.dim(0)? != 1 {
            return Err(Error::Invalid(format!(
                "channel masks take one image, got a batch of {}",
                x.dim(0)?
            )));
        }
        let prefix = net.prefix(x, site)?;
        let a = prefix.activation();
        if a.rank() < 2 {
            return Err(Error::Invalid(format!(
                "site `{}` has no channel dimension ({:?})",
                prefix.site(),
                a.dims()
            )));
        }
        let channels = a.dim(1)?;
        let out = net.suffix(&prefix, a, &mut Hooks::new())?;
        let classes = out.dim(1)?;
        let target = match target {
            Some(t) if t >= classes => {
                return Err(Error::Invalid(format!(
                    "target class {t} is outside the model's {classes} classes (0…{})",
                    classes - 1
                )))
            }
            Some(t) => t,
            None => {
                let o = if out.rank() > 2 {
                    out.flatten_from(2)?.mean(2)?
                } else {
                    out.clone()
                };
                o.argmax(1)?.flatten_all()?.to_vec1::<u32>()?[0] as usize
            }
        };
        let original = scalar(&reward(&out, target, Reward::Simple)?)?;
        Ok(Self {
            net,
            prefix,
            channels,
            target,
            original,
        })
    }

    /// The native site name.
    pub fn site(&self) -> &str {
        self.prefix.site()
    }

    /// The target class.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The activation at the site.
    pub fn activation(&self) -> &Tensor {
        self.prefix.activation()
    }

    fn mask_shape(&self, batch: usize) -> Vec<usize> {
        let mut shape = vec![batch, self.channels];
        shape.resize(self.activation().rank(), 1);
        shape
    }

    /// Target logits of the suffix for a batch of channel masks.
    ///
    /// # Shapes
    /// - `masks`: `(B, C)`; returns `(B,)`.
    pub fn scores(&self, masks: &Tensor) -> Result<Tensor> {
        let b = masks.dim(0)?;
        let a = self.activation();
        let m = masks.to_dtype(a.dtype())?.reshape(self.mask_shape(b))?;
        let out = self
            .net
            .suffix(&self.prefix, &a.broadcast_mul(&m)?, &mut Hooks::new())?;
        reward(&out, self.target, Reward::Simple)
    }

    /// The game's reward for a batch of soft channel masks: the target logit with the masked
    /// activation (preserve), its negative with the complement (delete), or their difference
    /// (dual, both halves in one suffix pass).
    ///
    /// # Shapes
    /// - `masks`: `(B, C)`; returns `(B,)`.
    pub fn game_scores(&self, masks: &Tensor, game: Game) -> Result<Tensor> {
        match game {
            Game::Preserve => self.scores(masks),
            Game::Delete => Ok(self.scores(&(1.0 - masks)?)?.neg()?),
            Game::Dual => {
                let b = masks.dim(0)?;
                let s = self.scores(&Tensor::cat(&[masks.clone(), (1.0 - masks)?], 0)?)?;
                Ok((s.narrow(0, 0, b)? - s.narrow(0, b, b)?)?)
            }
        }
    }

    /// Target logits with hard masks: for each set, exactly its channels kept (`keep_only`)
    /// or exactly its channels removed.
    pub fn hard_scores(&self, sets: &[Vec<usize>], keep_only: bool, batch: usize) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(sets.len());
        for chunk in sets.chunks(batch.max(1)) {
            let mut m = vec![if keep_only { 0f32 } else { 1.0 }; chunk.len() * self.channels];
            for (i, set) in chunk.iter().enumerate() {
                for &c in set {
                    m[i * self.channels + c] = if keep_only { 1.0 } else { 0.0 };
                }
            }
            let m = Tensor::from_vec(m, (chunk.len(), self.channels), self.activation().device())?;
            let s = self.scores(&m)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
            out.extend(s);
        }
        Ok(out)
    }

    /// `Σ_hw A_k·∂y_c/∂A_k` per channel, at the unmasked activation.
    pub fn activation_x_gradient(&self) -> Result<Vec<f64>> {
        let a = Var::from_tensor(self.activation())?;
        let out = self.net.suffix(&self.prefix, a.as_tensor(), &mut Hooks::new())?;
        let y = reward(&out, self.target, Reward::Simple)?.sum_all()?;
        let grads = y.backward()?;
        let g = grads.get(a.as_tensor()).cloned().unwrap_or(a.as_tensor().zeros_like()?);
        per_channel_sum(&(a.as_tensor() * g)?)
    }

    /// The spatial mean activation per channel.
    pub fn mean_activation(&self) -> Result<Vec<f64>> {
        let a = self.activation();
        let n: usize = a.dims().iter().skip(2).product::<usize>().max(1);
        Ok(per_channel_sum(a)?.into_iter().map(|s| s / n as f64).collect())
    }
}

fn per_channel_sum(t: &Tensor) -> Result<Vec<f64>> {
    let t = t.to_dtype(DType::F64)?;
    let t = if t.rank() > 2 { t.flatten_from(2)?.sum(2)? } else { t };
    Ok(t.squeeze(0)?.to_vec1::<f64>()?)
}

/// Indices of the `k` largest values, ties to the lower index.
pub fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Finds the extremal channel set of `keep` channels at `site` (SPEC §2).
///
/// # Shapes
/// - `x`: `(1, 3, H, W)`, normalised for `net`.
pub fn channel_masks(net: &dyn Network, x: &Tensor, site: &str, cfg: &ChannelConfig) -> Result<ChannelReport> {
    let cs = ChannelSite::new(net, x, site, cfg.target)?;
    channel_masks_at(&cs, cfg, &mut |_, _| {})
}

/// [`channel_masks`] on a cached site; `progress(iteration, total)` is called every step.
pub fn channel_masks_at(
    cs: &ChannelSite,
    cfg: &ChannelConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ChannelReport> {
    let c = cs.channels;
    if cfg.iterations == Some(0) {
        return Err(Error::Invalid(
            "at least one iteration is needed (--iterations 1 or more)".into(),
        ));
    }
    if cfg.keep == 0 || cfg.keep > c {
        return Err(Error::Invalid(format!(
            "--keep {} is not possible at `{}`: it has {c} channels (keep 1…{c})",
            cfg.keep,
            cs.site()
        )));
    }
    let original = cs.original;

    // Baselines.
    let by_activation = top_k(&cs.mean_activation()?, cfg.keep);
    let by_axg = top_k(&cs.activation_x_gradient()?, cfg.keep);
    let base = cs.hard_scores(&[by_activation.clone(), by_axg.clone()], true, 2)?;
    let baselines = Baselines {
        top_activation: base[0],
        activation_x_gradient: base[1],
    };

    let objective = |sets: &[Vec<usize>]| -> Result<Vec<f64>> {
        Ok(match cfg.game {
            Game::Preserve => cs.hard_scores(sets, true, cfg.batch)?,
            Game::Delete => cs
                .hard_scores(sets, false, cfg.batch)?
                .into_iter()
                .map(|s| -s)
                .collect(),
            Game::Dual => {
                let kept = cs.hard_scores(sets, true, cfg.batch)?;
                let del = cs.hard_scores(sets, false, cfg.batch)?;
                kept.iter().zip(&del).map(|(k, d)| k - d).collect()
            }
        })
    };
    // Soft optimisation; the best hard top-`keep` set seen along the way is kept.
    let (mask, history, soft_set) = optimise_soft(cs, cfg, original, &objective, progress)?;
    let soft_kept_score = cs.hard_scores(std::slice::from_ref(&soft_set), true, 1)?[0];

    // Discrete refinement, from the best of the candidate sets.
    let (mut set, mut swaps) = (soft_set.clone(), 0);
    if cfg.refine {
        let starts = vec![soft_set, by_axg, by_activation];
        let scores = objective(&starts)?;
        let best = (0..starts.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)))
            .unwrap();
        (set, swaps) = refine(cs, cfg, starts[best].clone(), scores[best], &objective)?;
    }
    let kept_score = cs.hard_scores(std::slice::from_ref(&set), true, 1)?[0];
    let deleted_score = cs.hard_scores(std::slice::from_ref(&set), false, 1)?[0];

    // Ranking: kept set first, each part by mask value, ties to the lower index.
    let mut kept_flag = vec![false; c];
    set.iter().for_each(|&i| kept_flag[i] = true);
    let mut ranking: Vec<usize> = (0..c).collect();
    ranking.sort_by(|&a, &b| {
        kept_flag[b]
            .cmp(&kept_flag[a])
            .then(mask[b].total_cmp(&mask[a]))
            .then(a.cmp(&b))
    });

    Ok(ChannelReport {
        site: cs.site().to_string(),
        channels_total: c,
        keep: cfg.keep,
        target: cs.target,
        original_score: original,
        kept_score,
        deleted_score,
        mask,
        ranking,
        baselines,
        soft_kept_score,
        swaps,
        history,
    })
}

type Objective<'a> = dyn Fn(&[Vec<usize>]) -> Result<Vec<f64>> + 'a;
/// Final soft mask, (reward, penalty) history, best hard set.
type SoftResult = (Vec<f32>, Vec<(f64, f64)>, Vec<usize>);

/// Runs the soft optimisation; returns the final mask, the history, and the best hard set of
/// the mask's top `keep` channels checked every 10 iterations and at the end.
fn optimise_soft(
    cs: &ChannelSite,
    cfg: &ChannelConfig,
    original: f64,
    objective: &Objective,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SoftResult> {
    let c = cs.channels;
    let iterations = cfg.iterations.unwrap_or(cfg.schedule.iterations());
    let area = cfg.keep as f64 / c as f64;
    let dev = cs.activation().device();
    let (init, scale) = match cfg.schedule {
        Schedule::Default => (0.5f32, 1.0 / original.abs().max(1e-6)),
        Schedule::Paper => (1.0, 1.0),
    };
    let m = Var::from_tensor(&Tensor::full(init, (1, c), dev)?.to_dtype(cs.activation().dtype())?)?;
    let mut sgd = Sgd::new(0.01, 0.9, 0.0);
    let mut adam = Adam::new(0.05);
    let mut history = Vec::with_capacity(iterations);
    let mut best: Option<(f64, Vec<usize>)> = None;
    let check = |m: &Var, best: &mut Option<(f64, Vec<usize>)>| -> Result<()> {
        let v = m.as_tensor().to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let set = top_k(&v, cfg.keep);
        let s = objective(std::slice::from_ref(&set))?[0];
        if best.as_ref().map(|(b, _)| s > *b).unwrap_or(true) {
            *best = Some((s, set));
        }
        Ok(())
    };
    for t in 0..iterations {
        if t > 0 && t % 10 == 0 {
            check(&m, &mut best)?;
        }
        let lambda = match cfg.schedule {
            Schedule::Default => 10.0 * t as f64 / iterations.max(1) as f64,
            Schedule::Paper => 1500.0 * (t as f64 / 150.0).min(1.0),
        };
        let mt = m.as_tensor();
        let r = cs.game_scores(mt, cfg.game)?;
        let penalty = area_penalty(mt, &[area], TieOrder::Index)?;
        let loss = ((penalty.clone() * lambda)? - (r.clone() * scale)?)?.sum_all()?;
        history.push((scalar(&r)?, scalar(&penalty)?));
        let grads = loss.backward()?;
        let g = grads.get(mt).cloned().unwrap_or(mt.zeros_like()?);
        match cfg.schedule {
            Schedule::Default => adam.step(&m, &g)?,
            Schedule::Paper => sgd.step(&m, &g)?,
        }
        m.set(&m.as_tensor().clamp(0.0, 1.0)?)?;
        progress(t + 1, iterations);
    }
    check(&m, &mut best)?;
    let mask = m.as_tensor().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok((mask, history, best.expect("checked at the end").1))
}

/// Local search on hard sets: each round scores swaps (one kept channel out, one other in)
/// chosen by the gradient of the objective at the hard mask, and accepts the best one if it
/// raises the objective.
fn refine(
    cs: &ChannelSite,
    cfg: &ChannelConfig,
    mut set: Vec<usize>,
    mut score: f64,
    objective: &Objective,
) -> Result<(Vec<usize>, usize)> {
    let c = cs.channels;
    let width = 8usize;
    let mut swaps = 0;
    for _round in 0..200 {
        // Gradient of the kept score at the hard mask: a first-order estimate of each swap.
        let mut hard = vec![0f32; c];
        set.iter().for_each(|&i| hard[i] = 1.0);
        let m = Var::from_tensor(&Tensor::from_vec(hard, (1, c), cs.activation().device())?)?;
        let s = cs.game_scores(m.as_tensor(), cfg.game)?;
        let g = s
            .sum_all()?
            .backward()?
            .get(m.as_tensor())
            .cloned()
            .unwrap_or(m.as_tensor().zeros_like()?);
        let g = g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        let mut inside = vec![false; c];
        set.iter().for_each(|&i| inside[i] = true);
        let outs: Vec<usize> = {
            let mut v: Vec<usize> = set.clone();
            v.sort_by(|&a, &b| g[a].total_cmp(&g[b]).then(a.cmp(&b)));
            v.truncate(width);
            v
        };
        let ins: Vec<usize> = {
            let mut v: Vec<usize> = (0..c).filter(|&i| !inside[i]).collect();
            v.sort_by(|&a, &b| g[b].total_cmp(&g[a]).then(a.cmp(&b)));
            v.truncate(width);
            v
        };
        let mut candidates = Vec::new();
        for &o in &outs {
            for &i in &ins {
                let mut s: Vec<usize> = set.iter().copied().filter(|&k| k != o).collect();
                s.push(i);
                candidates.push(s);
            }
        }
        if candidates.is_empty() {
            break;
        }
        let scores = objective(&candidates)?;
        let best = (0..candidates.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)))
            .unwrap();
        if scores[best] > score + 1e-9 * score.abs().max(1.0) {
            score = scores[best];
            set = candidates[best].clone();
            swaps += 1;
        } else {
            break;
        }
    }
    set.sort();
    Ok((set, swaps))
}
