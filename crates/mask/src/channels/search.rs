//! The discrete side of the channel search: hard sets scored in batches, the best top-`keep`
//! set tracked while the engine runs, and the swap refinement after it.

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Tensor, Var};

use super::{top_k, ChannelMask, ChannelSite};
use crate::engine::{MaskParameterisation, Observer};
use crate::{Game, Result};

/// The game's objective on hard sets: the kept score (preserve), minus the score without them
/// (delete), or their difference (dual); `batch` sets per suffix pass.
pub(super) struct HardObjective<'s, 'a> {
    pub site: &'s ChannelSite<'a>,
    pub game: Game,
    pub batch: usize,
}

impl HardObjective<'_, '_> {
    pub fn scores(&self, sets: &[Vec<usize>]) -> Result<Vec<f64>> {
        let cs = self.site;
        Ok(match self.game {
            Game::Preserve => cs.hard_scores(sets, true, self.batch)?,
            Game::Delete => cs
                .hard_scores(sets, false, self.batch)?
                .into_iter()
                .map(|s| -s)
                .collect(),
            Game::Dual => {
                let kept = cs.hard_scores(sets, true, self.batch)?;
                let del = cs.hard_scores(sets, false, self.batch)?;
                kept.iter().zip(&del).map(|(k, d)| k - d).collect()
            }
        })
    }
}

/// An engine observer that checks, for each `k` of `keeps`, the top-`k` set of its soft mask
/// (row `rows[i]` of the masks for `keeps[i]`) every 10 iterations (and once at the end,
/// [`TopK::finish`]), all keeps' sets in one batch, and keeps each keep's best; it also reports
/// progress.
pub(super) struct TopK<'o, 's, 'a, 'p> {
    hard: &'o HardObjective<'s, 'a>,
    keeps: Vec<usize>,
    rows: Vec<usize>,
    iterations: usize,
    best: Vec<Option<(f64, Vec<usize>)>>,
    progress: &'p mut dyn FnMut(usize, usize),
}

impl<'o, 's, 'a, 'p> TopK<'o, 's, 'a, 'p> {
    pub fn new(
        hard: &'o HardObjective<'s, 'a>,
        keeps: &[usize],
        rows: &[usize],
        iterations: usize,
        progress: &'p mut dyn FnMut(usize, usize),
    ) -> Self {
        Self {
            hard,
            keeps: keeps.to_vec(),
            rows: rows.to_vec(),
            iterations,
            best: vec![None; keeps.len()],
            progress,
        }
    }

    fn check(&mut self, params: &Var) -> Result<()> {
        let rows = params.as_tensor().to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let sets: Vec<Vec<usize>> = self
            .keeps
            .iter()
            .zip(&self.rows)
            .map(|(&k, &r)| top_k(&rows[r], k))
            .collect();
        let scores = self.hard.scores(&sets)?;
        for ((best, set), s) in self.best.iter_mut().zip(sets).zip(scores) {
            if best.as_ref().map(|(b, _)| s > *b).unwrap_or(true) {
                *best = Some((s, set));
            }
        }
        Ok(())
    }

    /// The last check, on the final masks; returns each keep's best set seen and its
    /// objective value.
    pub fn finish(mut self, param: &ChannelMask) -> Result<Vec<(Vec<usize>, f64)>> {
        self.check(param.params())?;
        Ok(self
            .best
            .into_iter()
            .map(|b| {
                let (score, set) = b.expect("checked at the end");
                (set, score)
            })
            .collect())
    }
}

impl Observer for TopK<'_, '_, '_, '_> {
    fn before_step(&mut self, t: usize, params: &Var) -> Result<()> {
        if t > 0 && t.is_multiple_of(10) {
            self.check(params)?;
        }
        Ok(())
    }

    fn after_step(&mut self, t: usize, _masks: &Tensor) -> Result<()> {
        (self.progress)(t + 1, self.iterations);
        Ok(())
    }
}

/// Channels on each side of a swap round's window: the kept channels of lowest and the others
/// of highest gradient of the game's reward at the hard mask.
const WINDOW: usize = 8;

/// Swaps scored exactly in a quick round: those of highest additive estimate.
const QUICK_CHECKS: usize = 8;

/// Local search on hard sets from several starts, the best set kept.
///
/// From each start, quick rounds: the window's removals `S ∖ {o}` and additions `S ∪ {i}`
/// are scored (the [`WINDOW`] kept channels of lowest and others of highest gradient), each
/// swap is estimated as `s(S ∖ {o}) + s(S ∪ {i}) − s(S)`, the [`QUICK_CHECKS`] best estimates
/// are scored exactly, and the best of those is accepted if it raises the objective (24 sets a
/// round). The best set reached from any start is then polished with full rounds (every swap
/// of the window scored, 64 sets) until none raises it, so the result is a local optimum of
/// the window. Given one start, only the full rounds run. A climb that reaches a set an
/// earlier one passed through stops there (it would follow the same path), and no set is
/// scored twice: its first score is reused, which is exact because a set's score is the same
/// bits in any batch and on any thread ([`ChannelSite::hard_scores`]). `scored` holds the
/// objective values of sets scored before (the starts' among them); the refinement adds
/// those it scores. Returns the set (sorted) and the swaps on its path (from its start, the
/// full rounds included).
///
/// Why several starts: the result depends on where a local search starts. On the bundled
/// images, at Lite0 and ResNet-50 `layer2`/`layer3` and keep 10 and 25
/// (`scripts/channels_depth.py`), full rounds from the best-scoring start alone ended up to
/// 14 % lower on 10 of the 16 rows and below greedy forward selection on two, and each of the
/// three starts led to the best set on some row (`docs/reference.md`, "Channel search").
pub(super) fn refine(
    hard: &HardObjective,
    game: Game,
    starts: &[(Vec<usize>, f64)],
    scored: &mut SetScores,
) -> Result<(Vec<usize>, usize)> {
    let mut memo = Memo {
        hard,
        scores: scored,
        visited: HashSet::new(),
    };
    let mut best: Option<(Vec<usize>, f64, usize)> = None;
    if let [(start, score)] = starts {
        best = Some((start.clone(), *score, 0));
    } else {
        for (start, score) in starts {
            if memo.visited.contains(&sorted(start)) {
                continue;
            }
            let (set, score, swaps) = climb(&mut memo, game, start.clone(), *score, Round::Quick)?;
            if best.as_ref().map(|(_, b, _)| score > *b).unwrap_or(true) {
                best = Some((set, score, swaps));
            }
        }
    }
    let (set, score, swaps) = best.expect("at least one start");
    // The full rounds pass through the quick climbs' sets again: they must not stop there.
    memo.visited.clear();
    let (set, _, polish) = climb(&mut memo, game, set, score, Round::Full)?;
    Ok((sorted(&set), swaps + polish))
}

/// The sets scored so far in a [`refine`] (by their sorted channels) and the sets its climbs
/// have passed through.
struct Memo<'h, 's, 'a, 'm> {
    hard: &'h HardObjective<'s, 'a>,
    scores: &'m mut SetScores,
    visited: HashSet<Vec<usize>>,
}

impl Memo<'_, '_, '_, '_> {
    /// The objective of each set, scoring (in batches) only the sets not scored before.
    fn scores(&mut self, sets: &[Vec<usize>]) -> Result<Vec<f64>> {
        let hard = self.hard;
        self.scores.get_or_score(sets, |new| hard.scores(new))
    }
}

/// Scores of hard sets by their sorted channels, each set scored once: reusing a score is
/// exact, because a set's score is the same bits in any batch and on any thread
/// ([`ChannelSite::hard_scores`]).
#[derive(Debug, Default)]
pub(super) struct SetScores(HashMap<Vec<usize>, f64>);

impl SetScores {
    /// The score of each of `sets`, calling `score` once on those (deduplicated, sorted) not
    /// scored before.
    pub fn get_or_score(
        &mut self,
        sets: &[Vec<usize>],
        score: impl FnOnce(&[Vec<usize>]) -> Result<Vec<f64>>,
    ) -> Result<Vec<f64>> {
        let keys: Vec<Vec<usize>> = sets.iter().map(|s| sorted(s)).collect();
        let mut new: Vec<Vec<usize>> = Vec::new();
        let mut queued = HashSet::new();
        for k in &keys {
            if !self.0.contains_key(k) && queued.insert(k) {
                new.push(k.clone());
            }
        }
        if !new.is_empty() {
            let scores = score(&new)?;
            self.0.extend(new.into_iter().zip(scores));
        }
        Ok(keys.iter().map(|k| self.0[k]).collect())
    }

    /// Records `score` for `set`, scored elsewhere (the same bits `get_or_score` would give).
    pub fn insert(&mut self, set: &[usize], score: f64) {
        self.0.insert(sorted(set), score);
    }

    /// How many sets have been scored.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

fn sorted(set: &[usize]) -> Vec<usize> {
    let mut s = set.to_vec();
    s.sort_unstable();
    s
}

/// How a round of [`climb`] scores the swaps of its window.
#[derive(Clone, Copy, PartialEq)]
enum Round {
    /// Removals and additions exactly, the best additive estimates of the swaps exactly.
    Quick,
    /// Every swap of the window exactly.
    Full,
}

/// One local search: rounds of `round` from `set` (scoring `score`) while the best swap found
/// raises the objective, or until it reaches a set an earlier climb passed through. Returns
/// the set, its score and the swaps made.
fn climb(
    memo: &mut Memo,
    game: Game,
    mut set: Vec<usize>,
    mut score: f64,
    round: Round,
) -> Result<(Vec<usize>, f64, usize)> {
    let cs = memo.hard.site;
    let c = cs.channels;
    let mut swaps = 0;
    for _round in 0..200 {
        if !memo.visited.insert(sorted(&set)) {
            break;
        }
        // Gradient of the kept score at the hard mask: a first-order estimate of each swap.
        let g = cs.gradient_at(&set, game)?;
        let mut inside = vec![false; c];
        set.iter().for_each(|&i| inside[i] = true);
        let mut outs: Vec<usize> = set.clone();
        outs.sort_by(|&a, &b| g[a].total_cmp(&g[b]).then(a.cmp(&b)));
        outs.truncate(WINDOW);
        let mut ins: Vec<usize> = (0..c).filter(|&i| !inside[i]).collect();
        ins.sort_by(|&a, &b| g[b].total_cmp(&g[a]).then(a.cmp(&b)));
        ins.truncate(WINDOW);
        let without = |o: usize| -> Vec<usize> { set.iter().copied().filter(|&k| k != o).collect() };
        let swap = |o: usize, i: usize| -> Vec<usize> {
            let mut s = without(o);
            s.push(i);
            s
        };
        let mut pairs: Vec<(usize, usize)> = outs.iter().flat_map(|&o| ins.iter().map(move |&i| (o, i))).collect();
        if pairs.is_empty() {
            break;
        }
        if round == Round::Quick {
            let mut singles: Vec<Vec<usize>> = outs.iter().map(|&o| without(o)).collect();
            singles.extend(ins.iter().map(|&i| set.iter().copied().chain([i]).collect()));
            let single = memo.scores(&singles)?;
            let estimate = |(o, i): (usize, usize)| {
                let a = outs.iter().position(|&k| k == o).expect("in the window");
                let b = ins.iter().position(|&k| k == i).expect("in the window");
                single[a] + single[outs.len() + b] - score
            };
            pairs.sort_by(|&p, &q| estimate(q).total_cmp(&estimate(p)).then(p.cmp(&q)));
            pairs.truncate(QUICK_CHECKS);
        }
        let candidates: Vec<Vec<usize>> = pairs.iter().map(|&(o, i)| swap(o, i)).collect();
        let scores = memo.scores(&candidates)?;
        let best = (0..candidates.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)))
            .expect("candidates");
        if scores[best] > score + 1e-9 * score.abs().max(1.0) {
            score = scores[best];
            set = candidates[best].clone();
            swaps += 1;
        } else {
            break;
        }
    }
    Ok((set, score, swaps))
}

/// Greedy forward selection, the baseline a channel search must beat: `keep` rounds, each
/// adding the channel whose addition gives the highest hard-mask kept score (every channel
/// outside the set scored, `batch` sets per suffix pass). Returns the set (sorted) and its
/// kept score. It scores `keep · channels` sets: minutes at a wide site.
pub fn greedy_selection(cs: &ChannelSite, keep: usize, batch: usize) -> Result<(Vec<usize>, f64)> {
    cs.check_keep(keep)?;
    let mut set: Vec<usize> = Vec::with_capacity(keep);
    let mut score = f64::NEG_INFINITY;
    for _ in 0..keep {
        let others: Vec<usize> = (0..cs.channels).filter(|c| !set.contains(c)).collect();
        let candidates: Vec<Vec<usize>> = others
            .iter()
            .map(|&c| {
                let mut s = set.clone();
                s.push(c);
                s
            })
            .collect();
        let scores = cs.hard_scores(&candidates, true, batch)?;
        let best = (0..others.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(b.cmp(&a)))
            .expect("keep ≤ channels leaves a channel to add");
        set.push(others[best]);
        score = scores[best];
    }
    set.sort();
    Ok((set, score))
}
