//! Channel-space extremal masks: the smallest set of channels at a site that keeps the
//! network's decision (`docs/03-channels.md`). The prefix up to the site runs once; the soft
//! mask is the engine's [`ChannelMask`] parameterisation, whose best top-`keep` sets are
//! tracked while it runs; a swap search then refines the hard set, scoring batches of
//! candidate sets in one suffix pass.

mod class;
mod contribution;
mod explain;
mod report;
mod search;
mod site;

use candle_core::Tensor;
use extremal_hook::Network;
use extremal_ops::{Adam, Optimiser, Sgd};
use serde::{Deserialize, Serialize};

pub use class::{class_tables, ChannelRecord, ClassChannel, ClassTable, SetScorer};
pub use contribution::{
    contributions, rank, Contributions, EXACT_GAINS_UP_TO, EXACT_SHAPLEY_UP_TO, SHAPLEY_PERMUTATIONS,
};
pub use explain::{conditional_heatmaps, ChannelContribution};
pub use report::{Baselines, ChannelReport, RankedChannel, Timings};
pub use search::greedy_selection;
pub use site::{ChannelMask, ChannelSite};

use crate::engine::{optimise, AreaWeight, History, Iteration, Objective};
use crate::{Error, Game, Result, TieOrder};

/// How the soft mask is optimised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
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

    /// The schedule's objective for `iterations` soft-mask iterations at `site` with `keep`
    /// of its channels.
    pub fn objective(&self, site: &ChannelSite, game: Game, keep: usize, iterations: usize) -> Objective {
        let (reward_scale, area_weight) = match self {
            Schedule::Default => (
                1.0 / site.original_score().abs().max(1e-6),
                AreaWeight::Ramp {
                    end: 10.0,
                    over: iterations,
                },
            ),
            Schedule::Paper => (1.0, AreaWeight::Ramp { end: 1500.0, over: 150 }),
        };
        Objective {
            game,
            reward_scale,
            areas: vec![keep as f64 / site.channels as f64],
            ties: TieOrder::Index,
            area_weight,
            iterations,
        }
    }

    /// The schedule's starting mask value and optimiser.
    fn start(&self) -> (f32, Box<dyn Optimiser>) {
        match self {
            Schedule::Default => (0.5, Box::new(Adam::new(0.05))),
            Schedule::Paper => (1.0, Box::new(Sgd::new(0.01, 0.9, 0.0))),
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

/// Where the swap refinement of the hard set starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Starts {
    /// A quick local search from each of the three starts (the soft mask's best top-`keep`
    /// set, the top `keep` by activation × gradient, the top `keep` by activation), then full
    /// swap rounds from the best set reached. On the bundled images at Lite0 and ResNet-50
    /// `layer2`/`layer3`, keep 10 and 25, it kept more than [`Starts::Best`] on 10 of 16 rows
    /// (up to 16 %), the same set on five and 0.9999× on one, and more than greedy forward
    /// selection on the four rows checked, where [`Starts::Best`] kept less on two; whole
    /// commands took 0.95–1.5× as long (`docs/reference.md`, "Channel search").
    #[default]
    All,
    /// Full swap rounds from the best-scoring of the three starts only: fewer sets scored, for
    /// runs over many images where time counts more than the last per cent.
    Best,
}

/// What to optimise; see [`channel_masks`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelConfig {
    /// How many channels to keep.
    pub keep: usize,
    /// Target class; `None` = the top-1 class of the unmasked network. With a cached
    /// [`ChannelSite`] the site's target is used, and a different one here is an error.
    pub target: Option<usize>,
    /// Preserve, delete or dual.
    pub game: Game,
    /// Optimisation schedule.
    pub schedule: Schedule,
    /// Iterations of the soft optimisation; `None` = the schedule's (default 100, paper 300).
    pub iterations: Option<usize>,
    /// After the soft mask, improve the hard set by swapping channels in and out while the
    /// objective rises, from the starts `starts` says.
    pub refine: bool,
    /// Where the refinement starts: each of the soft mask's best set and the two baselines'
    /// sets (the default), or the best-scoring of them only.
    pub starts: Starts,
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
            starts: Starts::All,
            batch: 32,
        }
    }
}

/// How [`explain_channels`] maps where a kept channel's contribution comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ExplainMethod {
    /// Conditional gradient × input ([`conditional_heatmaps`]): one backward pass per channel.
    #[default]
    Gradient,
    /// Image-space extremal perturbation of the channel's contribution
    /// ([`crate::explain_channel`]): the sum of its masks; a full optimisation per channel.
    Extremal,
}

/// Image-space maps of where each of `channels` (kept in `report`, made at `cs`) draws its
/// contribution, by `method`; `cfg` configures the extremal method (its areas and
/// iterations). `progress(i, iteration)` is called as the `i`-th channel's optimisation runs.
///
/// # Shapes
/// - returns: `(K, 1, H, W)`, the input's size.
pub fn explain_channels(
    cs: &ChannelSite,
    report: &ChannelReport,
    channels: &[usize],
    method: ExplainMethod,
    cfg: &crate::ExtremalConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    report.check_site(cs.site(), cs.channels)?;
    if let Some(k) = channels.iter().find(|k| !report.kept().contains(k)) {
        return Err(Error::Invalid(format!(
            "channel {k} is not one of the kept channels {:?}",
            report.kept()
        )));
    }
    match method {
        ExplainMethod::Gradient => conditional_heatmaps(cs, report.kept(), channels),
        ExplainMethod::Extremal => {
            let mut maps = Vec::with_capacity(channels.len());
            for (i, &k) in channels.iter().enumerate() {
                let r = crate::explain_channel(cs, report.kept(), k, cfg, &mut |t| progress(i, t))?;
                maps.push(r.masks.sum_keepdim(0)?.to_dtype(candle_core::DType::F32)?);
            }
            Ok(Tensor::cat(&maps, 0)?)
        }
    }
}

/// Indices of the `k` largest values, ties to the lower index.
pub fn top_k(values: &[f64], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Finds the extremal channel set of `keep` channels at `site`.
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
    let found = search_keeps(cs, &[cfg.keep], cfg, progress)?;
    report(cs, found.into_iter().next().expect("one keep, one set"), cfg)
}

/// A keep's set as the search left it, before its contributions.
struct Found {
    point: SweepPoint,
    history: History,
    timings: Timings,
    /// Kept scores of the sets the search scored (the soft set, the baselines' and, in the
    /// preserve game, every set of the refinement): the contributions reuse them.
    scored: search::SetScores,
}

/// The channel search for each of `keeps` (checked, distinct, ascending) with `cfg`'s other
/// settings: one soft phase for all of them (with the refinement, one mask, optimised for the
/// largest keep's area, each keep's best top-`keep` set tracked along it; without it, a mask
/// per keep at its own area), then per keep (side by side) the baselines and the refinement.
/// For one keep this is that keep's search.
///
/// Why one mask for a sweep: the soft phase is a forward and backward pass per iteration and
/// mask, so a mask per keep made it most of a sweep's cost (14 of 42 s at ResNet-50 `layer3`,
/// `--sweep 1,2,5,10,25,50`), while the refinement, which climbs from two more starts besides
/// the soft set, ended as high or higher from the largest keep's mask on 33 of the 34 points
/// measured (`docs/reference.md`, "One soft mask for a sweep").
fn search_keeps(
    cs: &ChannelSite,
    keeps: &[usize],
    cfg: &ChannelConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Found>> {
    if cfg.iterations == Some(0) {
        return Err(Error::Invalid(
            "at least one iteration is needed (--iterations 1 or more)".into(),
        ));
    }
    for &keep in keeps {
        cs.check_keep(keep)?;
    }
    if let Some(t) = cfg.target.filter(|&t| t != cs.target()) {
        return Err(Error::Invalid(format!(
            "the site was cached for class {}, the configuration asks for class {t}: make the ChannelSite with that target",
            cs.target()
        )));
    }
    let mut watch = Stopwatch::new();

    // Soft optimisation, all keeps at once; the best hard top-`keep` set seen along the way is
    // kept for each keep. With the refinement, one mask at the largest keep's area serves every
    // keep; without it a keep's set is its soft mask's alone, so each keep has a mask of its
    // own at its own area (the paper's method; the masks do not interact).
    let hard = search::HardObjective {
        site: cs,
        game: cfg.game,
        batch: cfg.batch,
    };
    let iterations = cfg.iterations.unwrap_or(cfg.schedule.iterations());
    let (mask_keeps, rows): (Vec<usize>, Vec<usize>) = if cfg.refine {
        (
            vec![*keeps.iter().max().expect("at least one keep")],
            vec![0; keeps.len()],
        )
    } else {
        (keeps.to_vec(), (0..keeps.len()).collect())
    };
    let mut objective = cfg.schedule.objective(cs, cfg.game, mask_keeps[0], iterations);
    objective.areas = mask_keeps.iter().map(|&k| k as f64 / cs.channels as f64).collect();
    let (init, mut optimiser) = cfg.schedule.start();
    let param = cs.masks(init, mask_keeps.len())?;
    let mut tracker = search::TopK::new(&hard, keeps, &rows, iterations, progress);
    let history = optimise(&cs.evidence(), &param, &objective, optimiser.as_mut(), &mut tracker)?;
    let soft_best = tracker.finish(&param)?;
    let masks = param.rows()?;
    let (soft_sets, soft_objective): (Vec<Vec<usize>>, Vec<f64>) = soft_best.into_iter().unzip();
    // In the preserve game the objective is the kept score: no set is scored again.
    let preserve = cfg.game == Game::Preserve;
    let soft_scores = if preserve {
        soft_objective.clone()
    } else {
        cs.hard_scores(&soft_sets, true, cfg.batch)?
    };
    let soft_seconds = watch.lap() / keeps.len() as f64;

    let mean_activation = cs.mean_activation()?;
    let activation_x_gradient = cs.activation_x_gradient()?;
    let one = |keep: usize, row: usize, soft_set: Vec<usize>, soft_score: f64, soft_objective: f64| -> Result<Found> {
        let mut watch = Stopwatch::new();
        let mut timings = Timings {
            soft: soft_seconds,
            ..Timings::default()
        };
        // Kept scores of the sets scored so far: the contributions reuse them, and in the
        // preserve game they are the refinement's objective values too.
        let mut scored = search::SetScores::default();
        scored.insert(&soft_set, soft_score);
        // Baselines.
        let by_activation = top_k(&mean_activation, keep);
        let by_axg = top_k(&activation_x_gradient, keep);
        let base = scored.get_or_score(&[by_activation.clone(), by_axg.clone()], |new| {
            cs.hard_scores(new, true, 2)
        })?;
        let baselines = Baselines {
            top_activation: base[0],
            activation_x_gradient: base[1],
        };
        timings.baselines = watch.lap();

        // Discrete refinement, from each of the candidate sets or from the best of them.
        let (mut set, mut swaps) = (soft_set.clone(), 0);
        if cfg.refine {
            let mut objective = search::SetScores::default();
            let memo = if preserve {
                &mut scored
            } else {
                objective.insert(&soft_set, soft_objective);
                &mut objective
            };
            let starts = vec![soft_set, by_axg, by_activation];
            let scores = memo.get_or_score(&starts, |new| hard.scores(new))?;
            let mut starts: Vec<(Vec<usize>, f64)> = starts.into_iter().zip(scores).collect();
            if cfg.starts == Starts::Best {
                let best = (0..starts.len())
                    .max_by(|&a, &b| starts[a].1.total_cmp(&starts[b].1).then(b.cmp(&a)))
                    .expect("three starts");
                starts = vec![starts.swap_remove(best)];
            }
            let before = memo.len();
            (set, swaps) = search::refine(&hard, cfg.game, &starts, memo)?;
            timings.refine_sets = memo.len() - before;
        }
        let kept_score = scored.get_or_score(std::slice::from_ref(&set), |new| cs.hard_scores(new, true, 1))?[0];
        let deleted_score = cs.hard_scores(std::slice::from_ref(&set), false, 1)?[0];
        timings.refine = watch.lap();

        Ok(Found {
            point: SweepPoint {
                keep,
                kept: set,
                kept_score,
                deleted_score,
                mask: masks[row].clone(),
                baselines,
                soft_kept_score: soft_score,
                swaps,
            },
            history: history
                .iter()
                .map(|it| Iteration {
                    rewards: vec![it.rewards[row]],
                    penalties: vec![it.penalties[row]],
                    area_weight: it.area_weight,
                })
                .collect(),
            timings,
            scored,
        })
    };
    // The keeps' searches side by side, the largest (the longest) first: each one's batch-1
    // gradient passes and small batches leave a core idle part of the time.
    let mut jobs: Vec<(usize, usize, Vec<usize>, f64, f64)> = keeps
        .iter()
        .zip(rows)
        .zip(soft_sets)
        .zip(soft_scores.into_iter().zip(soft_objective))
        .map(|(((&keep, row), set), (score, objective))| (keep, row, set, score, objective))
        .collect();
    jobs.sort_by_key(|&(keep, ..)| std::cmp::Reverse(keep));
    let mut found = extremal_ops::side_by_side(jobs.len(), |j| {
        let (keep, row, set, score, objective) = &jobs[j];
        one(*keep, *row, set.clone(), *score, *objective)
    })
    .into_iter()
    .collect::<Result<Vec<Found>>>()?;
    found.sort_by_key(|f| f.point.keep);
    Ok(found)
}

/// Seconds since it was made or since the last lap.
struct Stopwatch(std::time::Instant);

impl Stopwatch {
    fn new() -> Self {
        Self(std::time::Instant::now())
    }

    /// The seconds since the last lap (or since it was made), and a new lap begins.
    fn lap(&mut self) -> f64 {
        let now = std::time::Instant::now();
        let spent = (now - self.0).as_secs_f64();
        self.0 = now;
        spent
    }
}

/// A found set's report: its contributions and the ranking by them.
fn report(cs: &ChannelSite, found: Found, cfg: &ChannelConfig) -> Result<ChannelReport> {
    let Found {
        point,
        history,
        mut timings,
        mut scored,
    } = found;
    let mut watch = Stopwatch::new();
    let before = scored.len();
    let contribution = contribution::contributions_with(cs, &point.kept, point.kept_score, cfg.batch, &mut scored)?;
    timings.contribution_sets = scored.len() - before;
    let ranking = rank(&point.kept, &contribution.values);
    timings.contributions = watch.lap();
    Ok(ChannelReport {
        site: cs.site().to_string(),
        channels_total: cs.channels,
        keep: point.keep,
        target: cs.target(),
        original_score: cs.original_score(),
        kept_score: point.kept_score,
        deleted_score: point.deleted_score,
        empty_score: contribution.empty_score,
        mask: point.mask,
        ranking,
        contributions: contribution.values,
        drops: contribution.drops,
        exact: contribution.exact,
        baselines: point.baselines,
        soft_kept_score: point.soft_kept_score,
        swaps: point.swaps,
        history,
        timings,
    })
}

/// One keep of a sweep: the set the search found for it and its scores. The sweep's largest
/// keep is the search [`channel_masks_at`] runs for it alone; a smaller keep's refinement
/// starts from the best top-`keep` set of the largest keep's soft mask instead of a mask of its
/// own (without the refinement, every keep has its own mask, and every point is its keep's
/// search alone).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    /// Channels kept.
    pub keep: usize,
    /// The kept channels (ascending when refined).
    pub kept: Vec<usize>,
    /// The target logit with exactly the kept channels.
    pub kept_score: f64,
    /// The target logit with the kept channels removed.
    pub deleted_score: f64,
    /// The final soft mask, one value per channel (in a refined sweep, the one mask, optimised
    /// for the largest keep's area).
    pub mask: Vec<f32>,
    /// The heuristics' kept scores.
    pub baselines: Baselines,
    /// Kept score of the soft mask's best top-`keep` set seen while it was optimised, before
    /// refinement.
    pub soft_kept_score: f64,
    /// Accepted swaps during refinement.
    pub swaps: usize,
}

/// Channel masks for several `keeps` on one cached site (a sweep): every keep's set and
/// scores, and the full report (contributions, ranking) of the keep it chooses.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelSweep {
    /// One point per keep, in ascending keep.
    pub points: Vec<SweepPoint>,
    /// The smallest keep whose kept score reaches the original score, if any.
    pub extremal_keep: Option<usize>,
    /// The report of the extremal keep, or of the largest keep when none reaches the
    /// original score: its point's set, contributions and ranking, and the soft phase's
    /// history.
    pub chosen: ChannelReport,
}

/// The channel search for each of `keeps` (sorted and deduplicated; all are checked before
/// any runs), with `cfg`'s other settings: one soft phase optimises one mask at the largest
/// keep's area, and tracks each keep's best top-`keep` set along it; then each keep's set is
/// refined from that set and the two baselines' (so the largest keep's point is what
/// [`channel_masks_at`] finds for it alone, and a smaller keep's may differ from its search
/// alone, in either direction), the keeps side by side. Without the refinement
/// ([`ChannelConfig::refine`] off) a keep's set is its soft mask's top-`keep` alone, so each
/// keep gets a mask of its own at its own area (the paper's method), optimised together. The
/// contributions (most of a search's cost after the refinement) are computed for the chosen
/// keep only. `progress(iteration, iterations)` is called every soft step.
pub fn channel_sweep(
    cs: &ChannelSite,
    keeps: &[usize],
    cfg: &ChannelConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ChannelSweep> {
    let mut keeps = keeps.to_vec();
    keeps.sort();
    keeps.dedup();
    if keeps.is_empty() {
        return Err(Error::Invalid("a sweep needs at least one keep value".into()));
    }
    for &k in &keeps {
        cs.check_keep(k)?;
    }
    let mut found = search_keeps(cs, &keeps, cfg, progress)?;
    let original = cs.original_score();
    let reached = found.iter().position(|f| f.point.kept_score >= original);
    let points = found.iter().map(|f| f.point.clone()).collect();
    let chosen = found.swap_remove(reached.unwrap_or(keeps.len() - 1));
    Ok(ChannelSweep {
        points,
        extremal_keep: reached.map(|i| keeps[i]),
        chosen: report(cs, chosen, cfg)?,
    })
}
