//! A site cached for channel masks: the prefix once, batched suffix passes per set of masks.

use candle_core::{DType, Tensor, Var};
use extremal_hook::Network;

use crate::engine::{game_scores, ClassEvidence, MaskParameterisation, MaskValues, Site};
use crate::{reward, scalar, Error, Game, Result, Reward};

/// A prefix cached at a site, with what is needed to score channel sets quickly.
pub struct ChannelSite<'a> {
    site: Site<'a>,
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
        let site = Site::new(net, x, site)?;
        let a = site.activation();
        if a.rank() < 2 {
            return Err(Error::Invalid(format!(
                "site `{}` has no channel dimension ({:?})",
                site.name(),
                a.dims()
            )));
        }
        let channels = a.dim(1)?;
        let out = site.output(a)?;
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
            site,
            channels,
            target,
            original,
        })
    }

    /// The native site name.
    pub fn site(&self) -> &str {
        self.site.name()
    }

    /// The cached site.
    pub fn cached(&self) -> &Site<'a> {
        &self.site
    }

    /// The target class.
    pub fn target(&self) -> usize {
        self.target
    }

    /// The target logit of the unmasked network.
    pub fn original_score(&self) -> f64 {
        self.original
    }

    /// The activation at the site.
    pub fn activation(&self) -> &Tensor {
        self.site.activation()
    }

    /// Checks that `keep` channels can be kept here (1 … channels).
    pub fn check_keep(&self, keep: usize) -> Result<()> {
        let c = self.channels;
        if keep == 0 || keep > c {
            return Err(Error::Invalid(format!(
                "--keep {keep} is not possible at `{}`: it has {c} channels (keep 1…{c})",
                self.site()
            )));
        }
        Ok(())
    }

    /// A channel mask at this site with every value `init`.
    pub fn mask(&self, init: f32) -> Result<ChannelMask> {
        self.masks(init, 1)
    }

    /// `rows` channel masks at this site (optimised together, one per area), every value
    /// `init`.
    pub fn masks(&self, init: f32, rows: usize) -> Result<ChannelMask> {
        let a = self.activation();
        let params = Var::from_tensor(&Tensor::full(init, (rows, self.channels), a.device())?.to_dtype(a.dtype())?)?;
        Ok(ChannelMask {
            params,
            activation: a.clone(),
        })
    }

    /// Target logits of the suffix for a batch of channel masks.
    ///
    /// # Shapes
    /// - `masks`: `(B, C)`; returns `(B,)`.
    pub fn scores(&self, masks: &Tensor) -> Result<Tensor> {
        let out = self.site.output(&mask_channels(self.activation(), masks)?)?;
        reward(&out, self.target, Reward::Simple)
    }

    /// The target logit as the engine's evidence.
    pub fn evidence(&self) -> ClassEvidence<'_, 'a> {
        ClassEvidence {
            site: &self.site,
            target: self.target,
            reward: Reward::Simple,
        }
    }

    /// The game's reward of a batch of soft channel masks, differentiable with respect to them.
    ///
    /// # Shapes
    /// - `masks`: `(B, C)`; returns `(B,)`.
    pub fn game_scores(&self, masks: &Tensor, game: Game) -> Result<Tensor> {
        game_scores(&self.evidence(), &|m| mask_channels(self.activation(), m), masks, game)
    }

    /// The gradient of the game's reward with respect to the mask, at the hard mask of `set`
    /// (a first-order estimate of adding or removing each channel).
    pub fn gradient_at(&self, set: &[usize], game: Game) -> Result<Vec<f64>> {
        let c = self.channels;
        let mut hard = vec![0f32; c];
        set.iter().for_each(|&k| hard[k] = 1.0);
        let m = Var::from_tensor(&Tensor::from_vec(hard, (1, c), self.activation().device())?)?;
        let s = self.game_scores(m.as_tensor(), game)?;
        let g = s
            .sum_all()?
            .backward()?
            .get(m.as_tensor())
            .cloned()
            .unwrap_or(m.as_tensor().zeros_like()?);
        Ok(g.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
    }

    /// Target logits with hard masks: for each set, exactly its channels kept (`keep_only`)
    /// or exactly its channels removed.
    pub fn hard_scores(&self, sets: &[Vec<usize>], keep_only: bool, batch: usize) -> Result<Vec<f64>> {
        self.hard_scores_in(sets, keep_only, batch, rayon::current_num_threads())
    }

    /// [`ChannelSite::hard_scores`] with the sets cut into `parts` runs scored side by side
    /// ([`extremal_ops::join`]): candle's element-wise operations run on the calling thread, so
    /// one run at a time leaves cores idle (EfficientNet-Lite0 `layer3` keep 25 took 0.85× the
    /// time this way, ResNet-50 `layer3` 0.91×). A set's score does not depend on its batch.
    fn hard_scores_in(&self, sets: &[Vec<usize>], keep_only: bool, batch: usize, parts: usize) -> Result<Vec<f64>> {
        if parts < 2 || sets.len() < 2 {
            return self.hard_scores_serial(sets, keep_only, batch);
        }
        let half = parts / 2;
        let (a, b) = sets.split_at(sets.len() * half / parts);
        let (a, b) = extremal_ops::join(
            || self.hard_scores_in(a, keep_only, batch, half),
            || self.hard_scores_in(b, keep_only, batch, parts - half),
        );
        let mut out = a?;
        out.extend(b?);
        Ok(out)
    }

    /// [`ChannelSite::hard_scores`] on this thread, `batch` sets per suffix pass.
    fn hard_scores_serial(&self, sets: &[Vec<usize>], keep_only: bool, batch: usize) -> Result<Vec<f64>> {
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
        let out = self.site.output(a.as_tensor())?;
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

    /// The channel saliency `Σ_k m_k·Φ^k(x)` over the image: the masked activation summed
    /// over channels, upsampled (bilinear) to `(h, w)`; `None` at a site without positions.
    ///
    /// # Shapes
    /// - `mask`: one value per channel; returns `(h, w)`.
    pub fn saliency(&self, mask: &[f32], h: usize, w: usize) -> Result<Option<Tensor>> {
        let a = self.activation();
        if a.rank() != 4 {
            return Ok(None);
        }
        if mask.len() != self.channels {
            return Err(Error::Invalid(format!(
                "a mask of {} values at a site of {} channels",
                mask.len(),
                self.channels
            )));
        }
        let m = Tensor::new(mask, a.device())?
            .to_dtype(a.dtype())?
            .reshape((1, self.channels, 1, 1))?;
        let v = a.broadcast_mul(&m)?.sum_keepdim(1)?;
        Ok(Some(extremal_ops::resize_bilinear(&v, h, w)?.squeeze(0)?.squeeze(0)?))
    }
}

/// The activation with a batch of channel masks applied, `a ⊙ m` broadcast over positions.
///
/// # Shapes
/// - `activation`: `(1, C, …)`; `masks`: `(B, C)`; returns `(B, C, …)`.
fn mask_channels(activation: &Tensor, masks: &Tensor) -> Result<Tensor> {
    let b = masks.dim(0)?;
    let mut shape = vec![b, activation.dim(1)?];
    shape.resize(activation.rank(), 1);
    let m = masks.to_dtype(activation.dtype())?.reshape(shape)?;
    Ok(activation.broadcast_mul(&m)?)
}

fn per_channel_sum(t: &Tensor) -> Result<Vec<f64>> {
    let t = t.to_dtype(DType::F64)?;
    let t = if t.rank() > 2 { t.flatten_from(2)?.sum(2)? } else { t };
    Ok(t.squeeze(0)?.to_vec1::<f64>()?)
}

/// The channel-mask parameterisation: one value per channel, broadcast over positions; the
/// area constraint ranks the channel values.
pub struct ChannelMask {
    params: Var,
    activation: Tensor,
}

impl ChannelMask {
    /// The current mask, one value per channel.
    pub fn mask_values(&self) -> Result<Vec<f32>> {
        Ok(self
            .params
            .as_tensor()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }

    /// Each row's values (one mask per row).
    pub fn rows(&self) -> Result<Vec<Vec<f32>>> {
        Ok(self.params.as_tensor().to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}

impl MaskParameterisation for ChannelMask {
    fn params(&self) -> &Var {
        &self.params
    }

    fn masks(&self) -> Result<MaskValues> {
        let m = self.params.as_tensor().clone();
        Ok(MaskValues {
            area: m.clone(),
            masks: m,
        })
    }

    fn perturb(&self, masks: &Tensor, _iteration: usize) -> Result<Tensor> {
        mask_channels(&self.activation, masks)
    }
}
