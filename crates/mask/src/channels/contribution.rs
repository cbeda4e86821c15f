//! What each channel contributes to a kept set: a kept channel's Shapley share of the score
//! the set keeps (and its drop when it alone is removed), and the gain when another channel
//! alone is added.

use extremal_ops::random::SeededRng;

use super::search::SetScores;
use super::ChannelSite;
use crate::{Game, Result};

/// Kept sets of at most this many channels get exact Shapley values (every subset scored);
/// larger ones a seeded sample of permutations.
pub const EXACT_SHAPLEY_UP_TO: usize = 8;

/// Permutations sampled for the Shapley values of a larger kept set (in antithetic pairs).
pub const SHAPLEY_PERMUTATIONS: usize = 16;

/// Sites with at most this many channels get every gain exactly (one suffix pass each, in
/// batches); wider ones get first-order estimates unless the suffix is found linear.
pub const EXACT_GAINS_UP_TO: usize = 256;

/// How many of the largest first-order gains are checked exactly on a wide site.
const PROBES: usize = 8;

/// Each channel's contribution to a kept set `S` of a [`ChannelSite`] (`s(T)`: the target
/// logit with exactly the channels `T` kept).
///
/// The leave-one-out drop `s(S) − s(S ∖ {k})` answers "what is lost without k", but on a
/// suffix that is not linear in the mask the drops of a set found to work together add up to
/// several times what the set keeps (EfficientNet-Lite0's `layer3`, keep 10 on `chelsea.png`:
/// drops sum to 25.6 for `s(S) − s(∅)` = 6.0). A kept channel's contribution is therefore its
/// Shapley value in the game `T ↦ s(T)`, `T ⊆ S` (Shapley 1953; the share used for features
/// by Lundberg & Lee 2017): the average of its marginal gain over the orders in which `S` can
/// be built up. The kept contributions add up to `s(S) − s(∅)`, and on a linear suffix they
/// equal the drops.
#[derive(Debug, Clone, PartialEq)]
pub struct Contributions {
    /// Per channel: in `S`, its Shapley value; outside, the gain `s(S ∪ {k}) − s(S)`.
    pub values: Vec<f64>,
    /// Per channel in `S`: the drop `s(S) − s(S ∖ {k})`; `None` outside.
    pub drops: Vec<Option<f64>>,
    /// Per channel: `false` where the value is an estimate — a sampled Shapley value (a kept
    /// set of more than [`EXACT_SHAPLEY_UP_TO`] channels on a suffix that is not linear), or a
    /// first-order gain `∂s/∂m_k` at the hard mask of `S` (a site of more than
    /// [`EXACT_GAINS_UP_TO`] channels whose suffix is not linear).
    pub exact: Vec<bool>,
    /// `s(∅)`: the score with no channel kept.
    pub empty_score: f64,
}

/// The contributions to `set` at `cs`, whose hard-mask score is `kept_score`; `batch` sets per
/// suffix pass. First the gradient of `s` at `S` (one backward pass) and the drops (`|S|`
/// passes): when every drop agrees with its first-order value to 10⁻⁴ of the score, so do
/// the exact gains of the 8 largest first-order gains, and the drops add up to
/// `s(S) − s(∅)`, the suffix is linear in the mask (a pooling and a linear classifier) and
/// the drops are the Shapley values and the first-order gains exact. Otherwise the Shapley values are computed from all `2^|S|` subsets (up to
/// [`EXACT_SHAPLEY_UP_TO`] channels) or from [`SHAPLEY_PERMUTATIONS`] seeded permutations,
/// and the gains exactly on sites of at most [`EXACT_GAINS_UP_TO`] channels.
pub fn contributions(cs: &ChannelSite, set: &[usize], kept_score: f64, batch: usize) -> Result<Contributions> {
    contributions_with(cs, set, kept_score, batch, &mut SetScores::default())
}

/// [`contributions`], reusing the kept scores of sets in `scored` (a search's) and adding
/// those it scores: no set is scored twice (the Shapley prefixes one short of the whole set
/// are the drops' sets, and short prefixes repeat across permutations).
pub(super) fn contributions_with(
    cs: &ChannelSite,
    set: &[usize],
    kept_score: f64,
    batch: usize,
    scored: &mut SetScores,
) -> Result<Contributions> {
    let mut kept_scores = |sets: &[Vec<usize>]| scored.get_or_score(sets, |new| cs.hard_scores(new, true, batch));
    let c = cs.channels;
    let mut inside = vec![false; c];
    set.iter().for_each(|&k| inside[k] = true);
    let mut values = vec![0.0; c];
    let mut drops = vec![None; c];
    let mut exact = vec![true; c];

    let without: Vec<Vec<usize>> = set
        .iter()
        .map(|&k| set.iter().copied().filter(|&j| j != k).collect())
        .collect();
    let mut sets = without;
    sets.push(Vec::new());
    let scores = kept_scores(&sets)?;
    let empty_score = scores[set.len()];
    for (i, &k) in set.iter().enumerate() {
        drops[k] = Some(kept_score - scores[i]);
    }

    let others: Vec<usize> = (0..c).filter(|&j| !inside[j]).collect();
    let with = |js: &[usize]| -> Vec<Vec<usize>> {
        js.iter()
            .map(|&j| {
                let mut s = set.to_vec();
                s.push(j);
                s
            })
            .collect()
    };

    // First order: ∂s/∂m at the hard mask of S, checked against the drops and the largest gains.
    let g = cs.gradient_at(set, Game::Preserve)?;
    let mut probes = others.clone();
    probes.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()).then(a.cmp(&b)));
    probes.truncate(PROBES);
    let checked = kept_scores(&with(&probes))?;
    let tolerance = 1e-4 * kept_score.abs().max(1.0);
    let drop = |k: usize| drops[k].unwrap_or(f64::NAN);
    let mut linear = set.iter().all(|&k| (drop(k) - g[k]).abs() <= tolerance);
    // A product of kept channels passes the first-order checks at the hard mask; its drops do
    // not add up to what the set keeps.
    let sum: f64 = set.iter().map(|&k| drop(k)).sum();
    linear &= (sum - (kept_score - empty_score)).abs() <= tolerance * set.len().max(1) as f64;
    for (&j, s) in probes.iter().zip(&checked) {
        linear &= (s - kept_score - g[j]).abs() <= tolerance;
    }

    // Kept channels: Shapley values.
    if linear {
        set.iter().for_each(|&k| values[k] = drop(k));
    } else {
        let (phi, all_subsets) = shapley(set, kept_score, empty_score, &mut kept_scores)?;
        for (&k, v) in set.iter().zip(phi) {
            values[k] = v;
            exact[k] = all_subsets;
        }
    }

    // The others: gains. The probes' are already exact; on a narrow site every other one is
    // scored too, else the first-order value stands (exact when the suffix is linear).
    for &j in &others {
        values[j] = g[j];
        exact[j] = linear;
    }
    if !linear && c <= EXACT_GAINS_UP_TO {
        let rest: Vec<usize> = others.iter().copied().filter(|j| !probes.contains(j)).collect();
        let gains = kept_scores(&with(&rest))?;
        for (&j, s) in rest.iter().zip(gains) {
            values[j] = s - kept_score;
            exact[j] = true;
        }
    }
    for (&j, s) in probes.iter().zip(checked) {
        values[j] = s - kept_score;
        exact[j] = true;
    }
    Ok(Contributions {
        values,
        drops,
        exact,
        empty_score,
    })
}

/// The Shapley values of the kept channels in the game `T ↦ s(T)`, `T ⊆ set`, and whether
/// they are exact (every subset scored) rather than sampled.
fn shapley(
    set: &[usize],
    full: f64,
    empty: f64,
    kept_scores: &mut impl FnMut(&[Vec<usize>]) -> Result<Vec<f64>>,
) -> Result<(Vec<f64>, bool)> {
    let k = set.len();
    if k <= EXACT_SHAPLEY_UP_TO {
        // Every subset, by bit pattern over `set`.
        let subsets: Vec<Vec<usize>> = (0..1usize << k)
            .map(|bits| (0..k).filter(|i| bits >> i & 1 == 1).map(|i| set[i]).collect())
            .collect();
        let v = kept_scores(&subsets)?;
        let factorial = |n: usize| (1..=n).map(|i| i as f64).product::<f64>();
        let weight: Vec<f64> = (0..k)
            .map(|t| factorial(t) * factorial(k - t - 1) / factorial(k))
            .collect();
        let mut phi = vec![0.0; k];
        for bits in 0..1usize << k {
            let size = bits.count_ones() as usize;
            for (i, p) in phi.iter_mut().enumerate() {
                if bits >> i & 1 == 0 {
                    *p += weight[size] * (v[bits | 1 << i] - v[bits]);
                }
            }
        }
        return Ok((phi, true));
    }
    // Seeded permutations in antithetic pairs (each order and its reverse); every
    // permutation's marginal gains add up to s(S) − s(∅), so the estimates do too.
    let mut rng = SeededRng::new(0x5a4a_91e7);
    let mut orders: Vec<Vec<usize>> = Vec::with_capacity(SHAPLEY_PERMUTATIONS);
    while orders.len() < SHAPLEY_PERMUTATIONS {
        let mut order: Vec<usize> = (0..k).collect();
        rng.shuffle(&mut order);
        let reversed: Vec<usize> = order.iter().rev().copied().collect();
        orders.push(order);
        orders.push(reversed);
    }
    // The proper prefixes of each order (the empty and the full set are known).
    let prefixes: Vec<Vec<usize>> = orders
        .iter()
        .flat_map(|o| (1..k).map(move |len| o[..len].iter().map(|&i| set[i]).collect()))
        .collect();
    let v = kept_scores(&prefixes)?;
    let mut phi = vec![0.0; k];
    for (p, order) in orders.iter().enumerate() {
        let mut before = empty;
        for (len, &i) in order.iter().enumerate() {
            let after = if len + 1 == k { full } else { v[p * (k - 1) + len] };
            phi[i] += after - before;
            before = after;
        }
    }
    let n = orders.len() as f64;
    Ok((phi.into_iter().map(|x| x / n).collect(), false))
}

/// Channel indices by rank: the kept set first by contribution, then the others by gain,
/// each from the largest; ties to the lower index.
pub fn rank(set: &[usize], values: &[f64]) -> Vec<usize> {
    let mut kept = vec![false; values.len()];
    set.iter().for_each(|&k| kept[k] = true);
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| {
        kept[b]
            .cmp(&kept[a])
            .then(values[b].total_cmp(&values[a]))
            .then(a.cmp(&b))
    });
    order
}
