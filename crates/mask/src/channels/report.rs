//! What a channel search reports, and its JSON (`channels.json`).

use serde::{Deserialize, Serialize};

use crate::engine::History;
use crate::{Error, Result};

/// The kept scores of the two heuristics a channel set is compared with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baselines {
    /// The `keep` channels with the largest spatial mean activation.
    pub top_activation: f64,
    /// The `keep` channels with the largest signed `Σ_hw A_k·∂y_c/∂A_k`.
    pub activation_x_gradient: f64,
}

/// The result of [`channel_masks`]. As JSON (what `extremal channels --json` prints, less
/// the command's own keys) the channels are listed by rank with their mask values; the
/// history is not written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "ReportJson", try_from = "ReportJson")]
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
    /// The target logit with no channel kept.
    pub empty_score: f64,
    /// The final soft mask, one value per channel.
    pub mask: Vec<f32>,
    /// Channel indices by rank: the kept set first (ranks 1…keep) by contribution, then the
    /// others by gain; ties to the lower index.
    pub ranking: Vec<usize>,
    /// Each channel's contribution ([`super::Contributions`]): a kept channel's Shapley share
    /// of `kept_score − empty_score`, another's gain when it alone is added.
    pub contributions: Vec<f64>,
    /// A kept channel's drop when it alone is removed (`None` for the others).
    pub drops: Vec<Option<f64>>,
    /// Per channel: `false` where the contribution is a first-order estimate.
    pub exact: Vec<bool>,
    /// The heuristics' kept scores.
    pub baselines: Baselines,
    /// Kept score of the best top-`keep` set of the soft mask (checked every 10 iterations),
    /// before refinement.
    pub soft_kept_score: f64,
    /// Swaps on the refined set's path, from the start its search began at (the final full
    /// rounds included).
    pub swaps: usize,
    /// The soft optimisation's iterations.
    pub history: History,
    /// Where the search's time went.
    pub timings: Timings,
}

/// Where a channel search's time went, in seconds, and how many hard sets it scored (each a
/// pass of the suffix). In a sweep the soft phase is shared (each keep is given its share) and
/// the keeps' baselines and refinements run side by side, so their seconds overlap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// The two heuristic baselines.
    pub baselines: f64,
    /// The soft optimisation with its top-`keep` checks.
    pub soft: f64,
    /// The swap refinement.
    pub refine: f64,
    /// The contributions (Shapley values, gains, drops).
    pub contributions: f64,
    /// Hard sets scored by the refinement.
    pub refine_sets: usize,
    /// Hard sets scored by the contributions, besides those the refinement had scored.
    #[serde(default)]
    pub contribution_sets: usize,
}

impl ChannelReport {
    /// The kept channels, most important first.
    pub fn kept(&self) -> &[usize] {
        &self.ranking[..self.keep]
    }

    /// Checks that the report was made at `site` with `channels` channels (before its mask is
    /// used there).
    pub fn check_site(&self, site: &str, channels: usize) -> Result<()> {
        if self.site != site {
            return Err(Error::Invalid(format!(
                "the channel mask was made at `{}`, not at `{site}`: pass --layer {}",
                self.site, self.site
            )));
        }
        if self.channels_total != channels {
            return Err(Error::Invalid(format!(
                "the channel mask has {} channels, the site has {channels}: was it made with another model?",
                self.channels_total
            )));
        }
        Ok(())
    }
}

/// One channel of a report's JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedChannel {
    /// Channel index.
    pub index: usize,
    /// Its soft mask value.
    pub mask: f32,
    /// Its rank (1 = first).
    pub rank: usize,
    /// Its contribution (kept: its Shapley share of what the set keeps; other: the gain with
    /// it).
    pub contribution: f64,
    /// Kept: the score's drop without it alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<f64>,
    /// `false` where the contribution is a first-order estimate.
    pub exact: bool,
}

/// [`ChannelReport`] as JSON.
#[derive(Serialize, Deserialize)]
struct ReportJson {
    site: String,
    channels_total: usize,
    keep: usize,
    target: usize,
    original_score: f64,
    kept_score: f64,
    deleted_score: f64,
    empty_score: f64,
    soft_kept_score: f64,
    swaps: usize,
    baselines: Baselines,
    #[serde(default)]
    timings: Timings,
    channels: Vec<RankedChannel>,
}

impl From<ChannelReport> for ReportJson {
    fn from(r: ChannelReport) -> Self {
        let channels = r
            .ranking
            .iter()
            .enumerate()
            .map(|(i, &c)| RankedChannel {
                index: c,
                mask: r.mask[c],
                rank: i + 1,
                contribution: r.contributions[c],
                drop: r.drops[c],
                exact: r.exact[c],
            })
            .collect();
        Self {
            site: r.site,
            channels_total: r.channels_total,
            keep: r.keep,
            target: r.target,
            original_score: r.original_score,
            kept_score: r.kept_score,
            deleted_score: r.deleted_score,
            empty_score: r.empty_score,
            soft_kept_score: r.soft_kept_score,
            swaps: r.swaps,
            baselines: r.baselines,
            timings: r.timings,
            channels,
        }
    }
}

impl TryFrom<ReportJson> for ChannelReport {
    type Error = String;
    fn try_from(j: ReportJson) -> std::result::Result<Self, String> {
        let n = j.channels_total;
        if j.channels.len() != n || j.keep > n {
            return Err(format!(
                "a channel report of {n} channels lists {} and keeps {}",
                j.channels.len(),
                j.keep
            ));
        }
        let mut mask = vec![f32::NAN; n];
        let mut contributions = vec![0.0; n];
        let mut exact = vec![true; n];
        let mut drops = vec![None; n];
        let mut by_rank: Vec<(usize, usize)> = Vec::with_capacity(n);
        for c in &j.channels {
            if c.index >= n || !mask[c.index].is_nan() {
                return Err(format!("channel {} is out of range or listed twice", c.index));
            }
            if !(0.0..=1.0).contains(&c.mask) {
                return Err(format!("channel {}'s mask value {} is outside [0, 1]", c.index, c.mask));
            }
            mask[c.index] = c.mask;
            contributions[c.index] = c.contribution;
            exact[c.index] = c.exact;
            drops[c.index] = c.drop;
            by_rank.push((c.rank, c.index));
        }
        by_rank.sort();
        Ok(Self {
            site: j.site,
            channels_total: n,
            keep: j.keep,
            target: j.target,
            original_score: j.original_score,
            kept_score: j.kept_score,
            deleted_score: j.deleted_score,
            empty_score: j.empty_score,
            mask,
            ranking: by_rank.into_iter().map(|(_, c)| c).collect(),
            contributions,
            drops,
            exact,
            baselines: j.baselines,
            soft_kept_score: j.soft_kept_score,
            swaps: j.swaps,
            history: Vec::new(),
            timings: j.timings,
        })
    }
}
