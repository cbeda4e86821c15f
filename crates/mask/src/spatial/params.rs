//! The two spatial parameterisations of the engine: TorchRay's smooth mask over a
//! perturbation pyramid at the input, and a per-position mask at an inner site.

use candle_core::{Tensor, Var};

use super::{fast_ramp, ExtremalConfig, ExtremalSchedule, MaskGenerator, Perturbation, Pyramid};
use crate::engine::{MaskParameterisation, MaskValues};
use crate::{Error, Result};

/// TorchRay's parameterisation at the input: a smooth mask from a coarse grid
/// ([`MaskGenerator`]) selecting from a perturbation [`Pyramid`]; the area constraint counts
/// the mask's margin; the perturbed images are flipped left–right on even iterations when
/// `jitter` is set. Under the fast schedule the grid starts coarser: for the steps of its
/// area-weight ramp, each 2×2 block of parameters is tied to its mean after every step
/// ([`PyramidMask::tied_steps`]).
pub struct PyramidMask {
    params: Var,
    generator: MaskGenerator,
    pyramid: Pyramid,
    jitter: bool,
    tied_steps: usize,
}

impl PyramidMask {
    /// `k` masks for `input`, all parameters 1 (everything kept).
    ///
    /// # Shapes
    /// - `input`: `(1, 3, H, W)`.
    pub fn new(input: &Tensor, k: usize, cfg: &ExtremalConfig) -> Result<Self> {
        let (_, _, h, w) = input.dims4()?;
        let pyramid = match cfg.perturbation {
            Perturbation::Blur => Pyramid::blur(input, cfg.levels, cfg.max_blur)?,
            Perturbation::Fade => Pyramid::fade(input, cfg.levels)?,
        };
        let generator = MaskGenerator::new((h, w), cfg.step, cfg.sigma)?;
        let (hi, wi) = generator.shape_in();
        let tied_steps = match cfg.schedule {
            ExtremalSchedule::Torchray => 0,
            ExtremalSchedule::Fast => fast_ramp(cfg.iterations),
        };
        Ok(Self {
            params: Var::ones((k, 1, hi, wi), input.dtype(), input.device())?,
            generator,
            pyramid,
            jitter: cfg.jitter,
            tied_steps,
        })
    }

    /// How many first steps are each followed by tying the parameters in 2×2 blocks
    /// ([`tie_blocks`]): under [`ExtremalSchedule::Fast`], those of its area-weight ramp (a
    /// grid of twice the step while the weight grows, TorchRay's grid while the masks
    /// settle); 0 under TorchRay's schedule. On the parity inputs and four other one-ulp
    /// copies of each (`scripts/torchray_compare.py --fast-table`, `--fast-seeds 5`) the
    /// fast schedule met TorchRay's mean reward on 5 of 9 image–area pairs with it, 3 of 9
    /// without.
    pub fn tied_steps(&self) -> usize {
        self.tied_steps
    }
}

/// Each 2×2 block of a parameter grid set to its mean (a last odd row or column: the mean of
/// its cells, by repeating them).
///
/// # Shapes
/// - `p`: `(K, 1, h, w)`; returns the same.
pub fn tie_blocks(p: &Tensor) -> Result<Tensor> {
    let (k, c, h, w) = p.dims4()?;
    let (hb, wb) = (h.div_ceil(2), w.div_ceil(2));
    let padded = p.pad_with_same(2, 0, 2 * hb - h)?.pad_with_same(3, 0, 2 * wb - w)?;
    let mean = padded.reshape((k, c, hb, 2, wb, 2))?.mean(5)?.mean(3)?;
    let up = mean
        .reshape((k, c, hb, 1, wb, 1))?
        .repeat((1, 1, 1, 2, 1, 2))?
        .reshape((k, c, 2 * hb, 2 * wb))?;
    Ok(up.narrow(2, 0, h)?.narrow(3, 0, w)?.contiguous()?)
}

impl MaskParameterisation for PyramidMask {
    fn params(&self) -> &Var {
        &self.params
    }

    fn masks(&self) -> Result<MaskValues> {
        let full = self.generator.generate_full(self.params.as_tensor())?;
        let (k, _, ho, wo) = full.dims4()?;
        Ok(MaskValues {
            masks: self.generator.crop(&full)?,
            area: full.reshape((k, ho * wo))?,
        })
    }

    fn project(&self, iteration: usize) -> Result<()> {
        let p = self.params();
        let clamped = p.as_tensor().clamp(0.0, 1.0)?;
        p.set(&if iteration < self.tied_steps {
            tie_blocks(&clamped)?
        } else {
            clamped
        })?;
        Ok(())
    }

    fn perturb(&self, masks: &Tensor, iteration: usize) -> Result<Tensor> {
        let x = self.pyramid.apply(masks)?;
        Ok(if self.jitter && iteration.is_multiple_of(2) {
            x.flip(&[3])?
        } else {
            x
        })
    }
}

/// A spatial mask at an inner site: one parameter per position, shared by the channels;
/// where it is 0 the activation is replaced by a reference (each channel's spatial mean, or
/// zero).
pub struct SpatialMask {
    params: Var,
    activation: Tensor,
    reference: Tensor,
}

impl SpatialMask {
    /// `k` masks over `activation`, all parameters 0.5.
    ///
    /// # Shapes
    /// - `activation`: `(1, C, h, w)`.
    pub fn new(activation: &Tensor, k: usize, perturbation: Perturbation) -> Result<Self> {
        let (_, _, h, w) = activation.dims4().map_err(|_| {
            Error::Invalid(format!(
                "a spatial mask needs a site with channels and positions (1, C, h, w); this one is {:?}",
                activation.dims()
            ))
        })?;
        let reference = match perturbation {
            Perturbation::Blur => activation.mean_keepdim(3)?.mean_keepdim(2)?,
            Perturbation::Fade => activation.zeros_like()?,
        };
        Ok(Self {
            params: Var::from_tensor(
                &Tensor::full(0.5f32, (k, 1, h, w), activation.device())?.to_dtype(activation.dtype())?,
            )?,
            activation: activation.clone(),
            reference,
        })
    }
}

impl MaskParameterisation for SpatialMask {
    fn params(&self) -> &Var {
        &self.params
    }

    fn masks(&self) -> Result<MaskValues> {
        let m = self.params.as_tensor().clone();
        let (k, _, h, w) = m.dims4()?;
        Ok(MaskValues {
            area: m.reshape((k, h * w))?,
            masks: m,
        })
    }

    fn perturb(&self, masks: &Tensor, _iteration: usize) -> Result<Tensor> {
        // a·m + r·(1 − m) = r + (a − r)·m
        let diff = self.activation.broadcast_sub(&self.reference)?;
        Ok(diff.broadcast_mul(masks)?.broadcast_add(&self.reference)?)
    }
}
