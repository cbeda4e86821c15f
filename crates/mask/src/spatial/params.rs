//! The two spatial parameterisations of the engine: TorchRay's smooth mask over a
//! perturbation pyramid at the input, and a per-position mask at an inner site.

use candle_core::{Tensor, Var};

use super::{ExtremalConfig, MaskGenerator, Perturbation, Pyramid};
use crate::engine::{MaskParameterisation, MaskValues};
use crate::{Error, Result};

/// TorchRay's parameterisation at the input: a smooth mask from a coarse grid
/// ([`MaskGenerator`]) selecting from a perturbation [`Pyramid`]; the area constraint counts
/// the mask's margin; the perturbed images are flipped left–right on even iterations when
/// `jitter` is set.
pub struct PyramidMask {
    params: Var,
    generator: MaskGenerator,
    pyramid: Pyramid,
    jitter: bool,
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
        Ok(Self {
            params: Var::ones((k, 1, hi, wi), input.dtype(), input.device())?,
            generator,
            pyramid,
            jitter: cfg.jitter,
        })
    }
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
