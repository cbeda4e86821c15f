//! Where in the image a kept channel's contribution comes from: conditional heatmaps, and
//! one channel's contribution as the evidence of an image-space extremal perturbation.

use candle_core::{DType, Tensor, Var};
use extremal_hook::{Hooks, Network};

use super::ChannelSite;
use crate::engine::Evidence;
use crate::{reward, Error, Result, Reward};

/// Images per backward pass of [`conditional_heatmaps`].
const CHUNK: usize = 8;

/// Conditional heatmaps of `channels` for the kept set `set` at `cs`: for channel `k`,
/// `x ⊙ ∂R_k/∂x` summed over colour, where `R_k(x) = Σ_hw g_k ⊙ Φ_k(x)` is the first-order
/// contribution of channel `k` to the target logit at the hard mask of `set` (`g`: the logit's
/// gradient with respect to the masked activation, held fixed). This is gradient × input
/// restricted to channel `k`'s path through the site — Concept Relevance Propagation's
/// conditional attribution (Achtibat et al., Nature Machine Intelligence 2023; zennit-crp's
/// `CondAttribution`) with the gradient rule. Positive values are where channel `k` draws its
/// support for the class.
///
/// # Shapes
/// - returns: `(K, 1, H, W)` for `K = channels.len()`, the input's size.
pub fn conditional_heatmaps(cs: &ChannelSite, set: &[usize], channels: &[usize]) -> Result<Tensor> {
    let c = cs.channels;
    if let Some(&bad) = channels.iter().chain(set).find(|&&k| k >= c) {
        return Err(Error::Invalid(format!(
            "channel {bad} does not exist: the site has {c} channels (0…{})",
            c - 1
        )));
    }
    let site = cs.cached();
    let a = cs.activation();
    let mut shape = vec![1usize; a.rank()];
    shape[1] = c;
    let hard = hard_mask(set, c, a)?.reshape(shape.as_slice())?;
    // g: the target logit's gradient at the masked activation.
    let masked = Var::from_tensor(&a.broadcast_mul(&hard)?)?;
    let y = reward(&site.output(masked.as_tensor())?, cs.target(), Reward::Simple)?.sum_all()?;
    let g = y
        .backward()?
        .get(masked.as_tensor())
        .cloned()
        .unwrap_or(masked.as_tensor().zeros_like()?);
    let x = site.input();
    let dims = x.dims().to_vec();
    let mut maps = Vec::new();
    for chunk in channels.chunks(CHUNK) {
        let b = chunk.len();
        let mut batch = dims.clone();
        batch[0] = b;
        let xb = Var::from_tensor(&x.broadcast_as(batch.as_slice())?.contiguous()?)?;
        let phi = site.net().forward_to(xb.as_tensor(), site.name())?;
        // Per image of the batch, the gradient of its own channel only.
        let mut select = vec![0f32; b * c];
        for (i, &k) in chunk.iter().enumerate() {
            select[i * c + k] = 1.0;
        }
        let mut sel_shape = vec![b, c];
        sel_shape.resize(a.rank(), 1);
        let select = Tensor::from_vec(select, sel_shape.as_slice(), a.device())?.to_dtype(a.dtype())?;
        let weights = select.broadcast_mul(&g)?;
        let r = (phi * weights)?.sum_all()?;
        let grad = r
            .backward()?
            .get(xb.as_tensor())
            .cloned()
            .ok_or_else(|| Error::Invalid("no gradient reached the input from the site".into()))?;
        maps.push((grad * xb.as_tensor())?.sum_keepdim(1)?);
    }
    Ok(Tensor::cat(&maps, 0)?.to_dtype(DType::F32)?)
}

fn hard_mask(set: &[usize], c: usize, like: &Tensor) -> Result<Tensor> {
    let mut m = vec![0f32; c];
    set.iter().for_each(|&k| m[k] = 1.0);
    Ok(Tensor::from_vec(m, c, like.device())?.to_dtype(like.dtype())?)
}

/// One kept channel's masked contribution on any image: `s_S(x) − s_{S∖{k}}(x)`, the target
/// logit with exactly the channels `S` kept at the site minus the same without channel `k`,
/// run through the whole network (differentiable with respect to the images). As an
/// [`Evidence`] at the input it makes an image-space extremal perturbation explain one
/// channel's contribution instead of the class.
pub struct ChannelContribution<'a> {
    net: &'a dyn Network,
    site: String,
    target: usize,
    with: Tensor,
    without: Tensor,
}

impl<'a> ChannelContribution<'a> {
    /// Channel `channel` of the kept set `set` at `cs`.
    pub fn new(cs: &ChannelSite<'a>, set: &[usize], channel: usize) -> Result<Self> {
        let c = cs.channels;
        if !set.contains(&channel) {
            return Err(Error::Invalid(format!(
                "channel {channel} is not in the kept set {set:?}"
            )));
        }
        let a = cs.activation();
        let mut shape = vec![1usize; a.rank()];
        shape[1] = c;
        let without: Vec<usize> = set.iter().copied().filter(|&k| k != channel).collect();
        Ok(Self {
            net: cs.cached().net(),
            site: cs.site().to_string(),
            target: cs.target(),
            with: hard_mask(set, c, a)?.reshape(shape.as_slice())?,
            without: hard_mask(&without, c, a)?.reshape(shape.as_slice())?,
        })
    }

    /// The contribution on each image.
    ///
    /// # Shapes
    /// - `images`: `(B, 3, H, W)`; returns `(B,)`.
    pub fn on(&self, images: &Tensor) -> Result<Tensor> {
        let b = images.dim(0)?;
        let both = Tensor::cat(&[images, images], 0)?;
        let mut shape = self.with.dims().to_vec();
        shape[0] = b;
        let masks = Tensor::cat(
            &[
                self.with.broadcast_as(shape.as_slice())?,
                self.without.broadcast_as(shape.as_slice())?,
            ],
            0,
        )?;
        let out = self
            .net
            .forward_hooked(&both, &mut Hooks::new().mask(&self.site, masks))?;
        let y = reward(&out, self.target, Reward::Simple)?;
        Ok((y.narrow(0, 0, b)? - y.narrow(0, b, b)?)?)
    }
}

impl Evidence for ChannelContribution<'_> {
    fn evidence(&self, activation: &Tensor) -> Result<Tensor> {
        self.on(activation)
    }
}
