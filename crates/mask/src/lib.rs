//! The extremal-mask engine (Fong, Patrick & Vedaldi, ICCV 2019): one optimisation loop, one
//! area constraint and one game/reward vocabulary for masks at any site of a network.
//!
//! - [`engine`]: the loop ([`optimise`]) over a [`MaskParameterisation`] at a cached
//!   [`Site`], with an [`AreaWeight`] schedule and any [`Optimiser`] ([`Sgd`], [`Adam`]).
//! - [`area_penalty`]: the sorted-mask area constraint `R_a(m) = mean((sort(m) − r_a)²)`.
//! - [`Game`], [`Reward`]: preserve / delete / dual; simple or contrastive class evidence.
//! - [`spatial`]: extremal perturbation — TorchRay's smooth mask over a perturbation pyramid
//!   at the input ([`PyramidMask`]), or a per-position mask at an inner site ([`SpatialMask`]).
//! - [`channels`]: channel-space extremal masks — the smallest set of channels at a site that
//!   keeps the class ([`ChannelMask`], then a swap search on hard sets).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use extremal_mask::{area_penalty, TieOrder};
//! // A 4-value mask asked to keep 1/2: the target is [0, 0, 1, 1] against the sorted mask.
//! let m = Tensor::new(&[[0.0f32, 1.0, 0.0, 1.0]], &Device::Cpu)?;
//! assert_eq!(area_penalty(&m, &[0.5], TieOrder::Index)?.to_vec1::<f32>()?, vec![0.0]);
//! let m = Tensor::new(&[[1.0f32, 1.0, 1.0, 1.0]], &Device::Cpu)?;
//! assert_eq!(area_penalty(&m, &[0.5], TieOrder::Index)?.to_vec1::<f32>()?, vec![0.5]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod channels;
pub mod engine;
pub mod sort;
pub mod spatial;

pub use channels::{
    channel_masks, channel_masks_at, channel_sweep, class_tables, conditional_heatmaps, explain_channels,
    greedy_selection, Baselines, ChannelConfig, ChannelContribution, ChannelMask, ChannelRecord, ChannelReport,
    ChannelSite, ChannelSweep, ClassChannel, ClassTable, ExplainMethod, RankedChannel, Schedule, Starts, SweepPoint,
    Timings,
};
pub use engine::{
    game_scores, optimise, AreaWeight, ClassEvidence, Evidence, History, Iteration, MaskParameterisation, MaskValues,
    Objective, Observer, Site,
};
pub use extremal_ops::{Adam, Optimiser, Sgd};
pub use spatial::{
    explain_channel, extremal_perturbation, tie_blocks, AreaSummary, ExtremalConfig, ExtremalResult, ExtremalSchedule,
    ExtremalSummary, MaskGenerator, Perturbation, Pyramid, PyramidMask, SpatialMask,
};

use candle_core::{DType, Tensor, D};
use rayon::prelude::*;

/// Errors of mask optimisation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A site error.
    #[error(transparent)]
    Hook(#[from] extremal_hook::Error),
    /// A kernel error.
    #[error(transparent)]
    Ops(#[from] extremal_ops::Error),
    /// A request that cannot be met, with what to do instead.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Which part of the input the mask is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Game {
    /// Keep the masked part, maximise the class evidence.
    #[default]
    Preserve,
    /// Remove the masked part, minimise the class evidence.
    Delete,
    /// Both at once: preserved minus deleted.
    Dual,
}

impl std::str::FromStr for Game {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "preserve" => Ok(Game::Preserve),
            "delete" => Ok(Game::Delete),
            "dual" => Ok(Game::Dual),
            o => Err(Error::Invalid(format!(
                "unknown game `{o}`; use preserve, delete or dual"
            ))),
        }
    }
}

/// How class evidence is measured from the network's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Reward {
    /// The target logit `y_c`.
    #[default]
    Simple,
    /// `y_c − max(max_{c' ≠ c} y_{c'}, −100)` (TorchRay's floor of −100).
    Contrastive,
}

impl std::str::FromStr for Reward {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "simple" => Ok(Reward::Simple),
            "contrastive" => Ok(Reward::Contrastive),
            o => Err(Error::Invalid(format!(
                "unknown reward `{o}`; use simple or contrastive"
            ))),
        }
    }
}

/// The class evidence of each batch element; a spatial output is averaged over space.
///
/// # Shapes
/// - `output`: `(N, classes)` or `(N, classes, h, w)`.
/// - returns: `(N,)`.
pub fn reward(output: &Tensor, target: usize, kind: Reward) -> Result<Tensor> {
    let out = if output.rank() > 2 {
        output.flatten_from(2)?.mean(2)?
    } else {
        output.clone()
    };
    let classes = out.dim(1)?;
    if target >= classes {
        return Err(Error::Invalid(format!(
            "target class {target} is outside the model's {classes} classes"
        )));
    }
    let y = out.narrow(1, target, 1)?.squeeze(1)?;
    match kind {
        Reward::Simple => Ok(y),
        Reward::Contrastive => {
            // max over the other classes: push the target far down before the max.
            let mut penalty = vec![0f32; classes];
            penalty[target] = f32::INFINITY;
            let penalty = Tensor::new(penalty.as_slice(), out.device())?.to_dtype(out.dtype())?;
            // TorchRay's floor: the best other class scores at least -100.
            let others = out
                .broadcast_sub(&penalty.unsqueeze(0)?)?
                .max(D::Minus1)?
                .maximum(-100f64)?;
            Ok((y - others)?)
        }
    }
}

/// How the area constraint ranks tied mask values. Its gradient reaches each value through its
/// rank, and masks are full of ties (parameters start equal, and clamping makes whole regions
/// exactly 0 or 1), so the order decides which of the tied values are pushed and which not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TieOrder {
    /// By index: the first-listed tied value takes the lowest rank (a stable sort).
    #[default]
    Index,
    /// As PyTorch's CPU `sort` ranks them ([`sort::torch_order`]): what TorchRay's area
    /// constraint does, so image-space runs follow TorchRay's.
    Torch,
}

/// The area constraint of each mask: `mean((sort_ascending(m) − r_a)²)` where `r_a` is
/// `⌊n·(1 − a)⌋` zeros then ones (`n` values per mask, the count in f64). Tied values are
/// ranked by `ties`.
///
/// # Shapes
/// - `masks`: `(K, n)`, one flattened mask per row.
/// - `areas`: `K` values in [0, 1].
/// - returns: `(K,)`.
pub fn area_penalty(masks: &Tensor, areas: &[f64], ties: TieOrder) -> Result<Tensor> {
    let (k, n) = masks.dims2()?;
    if areas.len() != k {
        return Err(Error::Invalid(format!("{} areas for {k} masks", areas.len())));
    }
    // Sort without gradient, then gather (which has one): the gradient of the sorted values.
    let order = match ties {
        TieOrder::Index => masks.detach().arg_sort_last_dim(true)?,
        TieOrder::Torch => {
            let rows = masks.detach().to_dtype(DType::F64)?.to_vec2::<f64>()?;
            // One mask per thread (a 224² image's mask is 67,600 values, sorted every step).
            let order: Vec<Vec<u32>> = rows.par_iter().map(|row| sort::torch_order(row)).collect();
            let order: Vec<u32> = order.into_iter().flatten().collect();
            Tensor::from_vec(order, (k, n), masks.device())?
        }
    };
    let sorted = masks.contiguous()?.gather(&order, 1)?;
    let mut reference = Vec::with_capacity(k * n);
    for &a in areas {
        let zeros = ((n as f64) * (1.0 - a)).floor() as usize;
        reference.extend((0..n).map(|i| if i < zeros { 0f32 } else { 1.0 }));
    }
    let reference = Tensor::from_vec(reference, (k, n), masks.device())?.to_dtype(masks.dtype())?;
    Ok((sorted - reference)?.sqr()?.mean(1)?)
}

/// A scalar as f64.
pub(crate) fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.sum_all()?.to_scalar::<f64>()?)
}
