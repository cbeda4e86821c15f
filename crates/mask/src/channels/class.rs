//! Which channels a class uses over many images: one record per image of a class-level run,
//! and the class tables made from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{top_k, ChannelReport, ChannelSite};
use crate::{Error, Result};

/// One image of a class-level channel run (a line of its `results.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// The image, as the run names it (its path relative to the folder).
    pub image: String,
    /// The native site name.
    pub site: String,
    /// The target class.
    pub target: usize,
    /// Channels kept.
    pub keep: usize,
    /// Channels at the site.
    pub channels_total: usize,
    /// The target logit of the unmasked network.
    pub original_score: f64,
    /// The target logit with exactly the kept channels.
    pub kept_score: f64,
    /// The target logit with no channel kept.
    pub empty_score: f64,
    /// The kept channels, by rank.
    pub kept: Vec<usize>,
    /// Every channel's contribution ([`ChannelReport::contributions`]).
    pub contributions: Vec<f64>,
    /// Every channel's spatial mean activation on this image.
    pub mean_activation: Vec<f64>,
    /// Every channel's `Σ_hw A_k·∂y_c/∂A_k` on this image.
    pub activation_x_gradient: Vec<f64>,
}

impl ChannelRecord {
    /// The record of `report`, made at `cs` on the image named `image`.
    pub fn new(image: &str, cs: &ChannelSite, report: &ChannelReport) -> Result<Self> {
        report.check_site(cs.site(), cs.channels)?;
        Ok(Self {
            image: image.to_string(),
            site: report.site.clone(),
            target: report.target,
            keep: report.keep,
            channels_total: report.channels_total,
            original_score: report.original_score,
            kept_score: report.kept_score,
            empty_score: report.empty_score,
            kept: report.kept().to_vec(),
            contributions: report.contributions.clone(),
            mean_activation: cs.mean_activation()?,
            activation_x_gradient: cs.activation_x_gradient()?,
        })
    }
}

/// One channel of a [`ClassTable`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassChannel {
    /// Channel index.
    pub index: usize,
    /// On how many images it is kept.
    pub kept: usize,
    /// `kept / images`.
    pub kept_fraction: f64,
    /// Its mean contribution over the images (kept: its share; not kept: its gain).
    pub mean_contribution: f64,
}

/// Which channels a class uses: over the images of one target class, how often each channel
/// is kept and what it contributes, the class-level set (the `keep` channels most often kept)
/// and how it scores against the per-image sets and the two heuristics' class-level sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassTable {
    /// The native site name.
    pub site: String,
    /// The class.
    pub target: usize,
    /// Channels kept per image and in the class-level sets.
    pub keep: usize,
    /// Images of the class.
    pub images: usize,
    /// The class-level set: the `keep` channels most often kept (ties: larger mean
    /// contribution, then lower index).
    pub class_set: Vec<usize>,
    /// The `keep` channels of largest mean activation over the images.
    pub top_activation_set: Vec<usize>,
    /// The `keep` channels of largest mean activation × gradient over the images.
    pub activation_x_gradient_set: Vec<usize>,
    /// Mean over the images of the unmasked score.
    pub mean_original_score: f64,
    /// Mean of each image's own extremal set's kept score.
    pub mean_image_set_score: f64,
    /// Mean kept score of the class-level set.
    pub mean_class_set_score: f64,
    /// Mean kept score of the top-activation class-level set.
    pub mean_top_activation_score: f64,
    /// Mean kept score of the activation × gradient class-level set.
    pub mean_activation_x_gradient_score: f64,
    /// Every channel, most often kept first (the order of the class set).
    pub channels: Vec<ClassChannel>,
}

/// Scores channel sets (hard masks) on a record's image: one kept score per set.
pub type SetScorer<'a> = dyn FnMut(&ChannelRecord, &[Vec<usize>]) -> Result<Vec<f64>> + 'a;

/// The class tables of `records`, one per target class (ascending), each made from its
/// records in image order (so that a run split into shards gives the same tables).
/// `score(record, sets)` returns the hard-mask kept scores of `sets` on the record's image.
pub fn class_tables(records: &[ChannelRecord], score: &mut SetScorer) -> Result<Vec<ClassTable>> {
    let Some(first) = records.first() else {
        return Err(Error::Invalid("no records: nothing to tabulate".into()));
    };
    let mut seen = std::collections::HashSet::new();
    for r in records {
        if (r.site.as_str(), r.keep, r.channels_total) != (first.site.as_str(), first.keep, first.channels_total) {
            return Err(Error::Invalid(format!(
                "the records mix runs: `{}` keeps {} of {} at `{}`, `{}` keeps {} of {} at `{}`",
                first.image, first.keep, first.channels_total, first.site, r.image, r.keep, r.channels_total, r.site
            )));
        }
        let n = r.channels_total;
        if [
            r.contributions.len(),
            r.mean_activation.len(),
            r.activation_x_gradient.len(),
        ] != [n, n, n]
            || r.kept.len() != r.keep
            || r.kept.iter().any(|&k| k >= n)
        {
            return Err(Error::Invalid(format!("the record of `{}` is inconsistent", r.image)));
        }
        if !seen.insert(r.image.as_str()) {
            return Err(Error::Invalid(format!(
                "`{}` is recorded twice: were the same shard's records merged twice?",
                r.image
            )));
        }
    }
    let mut by_class: BTreeMap<usize, Vec<&ChannelRecord>> = BTreeMap::new();
    for r in records {
        by_class.entry(r.target).or_default().push(r);
    }
    let (c, keep) = (first.channels_total, first.keep);
    let mut tables = Vec::new();
    for (target, mut group) in by_class {
        group.sort_by(|a, b| a.image.cmp(&b.image));
        let n = group.len() as f64;
        let mean_of = |f: &dyn Fn(&ChannelRecord) -> &[f64]| -> Vec<f64> {
            let mut m = vec![0.0; c];
            for r in &group {
                m.iter_mut().zip(f(r)).for_each(|(a, v)| *a += v);
            }
            m.into_iter().map(|v| v / n).collect()
        };
        let mut kept = vec![0usize; c];
        for r in &group {
            r.kept.iter().for_each(|&k| kept[k] += 1);
        }
        let mean_contribution = mean_of(&|r| &r.contributions);
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|&a, &b| {
            kept[b]
                .cmp(&kept[a])
                .then(mean_contribution[b].total_cmp(&mean_contribution[a]))
                .then(a.cmp(&b))
        });
        let class_set = order[..keep].to_vec();
        let top_activation_set = top_k(&mean_of(&|r| &r.mean_activation), keep);
        let activation_x_gradient_set = top_k(&mean_of(&|r| &r.activation_x_gradient), keep);
        let sets = [
            class_set.clone(),
            top_activation_set.clone(),
            activation_x_gradient_set.clone(),
        ];
        let mut sums = [0.0; 3];
        for r in &group {
            let s = score(r, &sets)?;
            sums.iter_mut().zip(s).for_each(|(a, v)| *a += v);
        }
        tables.push(ClassTable {
            site: first.site.clone(),
            target,
            keep,
            images: group.len(),
            class_set,
            top_activation_set,
            activation_x_gradient_set,
            mean_original_score: group.iter().map(|r| r.original_score).sum::<f64>() / n,
            mean_image_set_score: group.iter().map(|r| r.kept_score).sum::<f64>() / n,
            mean_class_set_score: sums[0] / n,
            mean_top_activation_score: sums[1] / n,
            mean_activation_x_gradient_score: sums[2] / n,
            channels: order
                .iter()
                .map(|&k| ClassChannel {
                    index: k,
                    kept: kept[k],
                    kept_fraction: kept[k] as f64 / n,
                    mean_contribution: mean_contribution[k],
                })
                .collect(),
        });
    }
    Ok(tables)
}
