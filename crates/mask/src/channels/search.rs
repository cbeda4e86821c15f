//! The discrete side of the channel search: hard sets scored in batches, the best top-`keep`
//! set tracked while the engine runs, and the swap refinement after it.

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

/// An engine observer that checks each soft mask's top-`keep` set (row `b` of the masks keeps
/// `keeps[b]`) every 10 iterations (and once at the end, [`TopK::finish`]), all rows' sets in
/// one batch, and keeps each row's best; it also reports progress.
pub(super) struct TopK<'o, 's, 'a, 'p> {
    hard: &'o HardObjective<'s, 'a>,
    keeps: Vec<usize>,
    iterations: usize,
    best: Vec<Option<(f64, Vec<usize>)>>,
    progress: &'p mut dyn FnMut(usize, usize),
}

impl<'o, 's, 'a, 'p> TopK<'o, 's, 'a, 'p> {
    pub fn new(
        hard: &'o HardObjective<'s, 'a>,
        keeps: &[usize],
        iterations: usize,
        progress: &'p mut dyn FnMut(usize, usize),
    ) -> Self {
        Self {
            hard,
            keeps: keeps.to_vec(),
            iterations,
            best: vec![None; keeps.len()],
            progress,
        }
    }

    fn check(&mut self, params: &Var) -> Result<()> {
        let rows = params.as_tensor().to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let sets: Vec<Vec<usize>> = rows.iter().zip(&self.keeps).map(|(v, &k)| top_k(v, k)).collect();
        let scores = self.hard.scores(&sets)?;
        for ((best, set), s) in self.best.iter_mut().zip(sets).zip(scores) {
            if best.as_ref().map(|(b, _)| s > *b).unwrap_or(true) {
                *best = Some((s, set));
            }
        }
        Ok(())
    }

    /// The last check, on the final masks; returns each row's best set seen.
    pub fn finish(mut self, param: &ChannelMask) -> Result<Vec<Vec<usize>>> {
        self.check(param.params())?;
        Ok(self
            .best
            .into_iter()
            .map(|b| b.expect("checked at the end").1)
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

/// Local search on hard sets: each round scores swaps (one kept channel out, one other in)
/// among the 8 kept channels of lowest and the 8 others of highest gradient of the game's
/// reward at the hard mask, and accepts the best one if it raises the objective. Returns the
/// set, the swaps made and the sets scored. (Scoring the 4 × 4 first and accepting its best
/// when it improves halves the sets scored but changes the path: on coffee.png, Lite0 `layer3`,
/// keep 10, it ended at 2.59 where this search reaches 3.51.)
pub(super) fn refine(
    hard: &HardObjective,
    game: Game,
    mut set: Vec<usize>,
    mut score: f64,
) -> Result<(Vec<usize>, usize, usize)> {
    let cs = hard.site;
    let c = cs.channels;
    let width = 8usize;
    let mut swaps = 0;
    let mut scored = 0;
    for _round in 0..200 {
        // Gradient of the kept score at the hard mask: a first-order estimate of each swap.
        let g = cs.gradient_at(&set, game)?;
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
        let scores = hard.scores(&candidates)?;
        scored += candidates.len();
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
    set.sort();
    Ok((set, swaps, scored))
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
