//! TorchRay's smooth-mask generator: the parameter grid → smooth masks, as one custom op with
//! its own backward (the row kernels are in `kernels.rs`).

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::kernels::Generate;
use crate::{Error, Result};

/// TorchRay's smooth-mask generator: a mask of `shape` from a `⌈H/step⌉ × ⌈W/step⌉` grid of
/// parameters in [0, 1]. Each output pixel pools, with a soft-max of coldness 20, the
/// parameters of its `(2r+1)²` grid neighbours weighted by a radial kernel of scale `sigma`;
/// the result is clamped to [0, 1]. The full mask has a margin of `sigma` pixels around the
/// image (the area constraint counts it); the visible mask is its centre.
#[derive(Debug, Clone)]
pub struct MaskGenerator {
    shape: (usize, usize),
    pub(super) step: usize,
    sigma: f64,
    pub(super) padding: usize,
    pub(super) radius: usize,
    pub(super) shape_in: (usize, usize),
    pub(super) shape_out: (usize, usize),
    margin: usize,
    /// Kernel weights, `[uy][tap][ux]`, `(2r+1)²` taps per pixel.
    pub(super) weight: Vec<f32>,
}

impl MaskGenerator {
    /// The generator for masks of `shape = (H, W)` with parameter `step` (pixels) and kernel
    /// `sigma` (pixels). TorchRay's defaults are step 7, sigma 21.
    pub fn new(shape: (usize, usize), step: usize, sigma: f64) -> Result<Self> {
        if step == 0 || sigma.is_nan() || sigma <= 0.0 || shape.0 == 0 || shape.1 == 0 {
            return Err(Error::Invalid(format!(
                "mask generator: step {step} and sigma {sigma} must be positive, shape {shape:?} non-empty"
            )));
        }
        let margin = sigma;
        let padding = 1 + ((margin + sigma) / step as f64).ceil() as usize;
        let radius = 1 + (sigma / step as f64).ceil() as usize;
        let taps = 2 * radius + 1;
        let shape_in = (shape.0.div_ceil(step), shape.1.div_ceil(step));
        let mid = |z: usize| z + 2 * padding + 1 - taps;
        let shape_mid = (mid(shape_in.0), mid(shape_in.1));
        let shape_up = (step * shape_mid.0, step * shape_mid.1);
        let shape_out = (shape_up.0 - step + 1, shape_up.1 - step + 1);
        let m = margin.round() as usize;
        if shape_out.0 < m + shape.0 || shape_out.1 < m + shape.1 {
            return Err(Error::Invalid(format!(
                "mask generator: step {step} and sigma {sigma} leave a {}x{} mask, too small for a \
                 {}x{} image with a margin of {m}; use a larger sigma relative to the step (TorchRay's \
                 default is step 7, sigma 21)",
                shape_out.0, shape_out.1, shape.0, shape.1
            )));
        }
        // In f32, as TorchRay computes it.
        let step_inv = (
            shape_mid.0 as f32 / shape_up.0 as f32,
            shape_mid.1 as f32 / shape_up.1 as f32,
        );
        let (stepf, marginf, sigmaf) = (step as f32, margin as f32, sigma as f32);
        let mut weight = vec![0f32; shape_out.0 * shape_out.1 * taps * taps];
        weight
            .par_chunks_mut(shape_out.1 * taps * taps)
            .enumerate()
            .for_each(|(uy, row)| {
                let uyf = uy as f32;
                for ux in 0..shape_out.1 {
                    let uxf = ux as f32;
                    for ky in 0..taps {
                        for kx in 0..taps {
                            let iy = (step_inv.0 * uyf).floor() + ky as f32 - padding as f32;
                            let ix = (step_inv.1 * uxf).floor() + kx as f32 - padding as f32;
                            let dy = uyf - (marginf + stepf * iy);
                            let dx = uxf - (marginf + stepf * ix);
                            let delta = (dy * dy + dx * dx).sqrt();
                            let z = (delta / sigmaf - 0.5).max(0.0);
                            row[(ky * taps + kx) * shape_out.1 + ux] = (-2.0 * z * z).exp();
                        }
                    }
                }
            });
        Ok(Self {
            shape,
            step,
            sigma,
            padding,
            radius,
            shape_in,
            shape_out,
            margin: margin.round() as usize,
            weight,
        })
    }

    /// The parameter grid's size `(⌈H/step⌉, ⌈W/step⌉)`.
    pub fn shape_in(&self) -> (usize, usize) {
        self.shape_in
    }

    /// The full mask's size, margin included.
    pub fn shape_out(&self) -> (usize, usize) {
        self.shape_out
    }

    /// The visible mask's size, `(H, W)`.
    pub fn shape(&self) -> (usize, usize) {
        self.shape
    }

    /// The step and sigma the generator was made with.
    pub fn step_sigma(&self) -> (usize, f64) {
        (self.step, self.sigma)
    }

    /// The full masks (margin included) for `params`; differentiable.
    ///
    /// # Shapes
    /// - `params`: `(K, 1, h, w)` with `(h, w)` = [`MaskGenerator::shape_in`].
    /// - returns: `(K, 1, H_out, W_out)` with [`MaskGenerator::shape_out`].
    pub fn generate_full(&self, params: &Tensor) -> Result<Tensor> {
        self.generate_full_with(params, extremal_ops::Kernels::detected())
    }

    /// [`MaskGenerator::generate_full`] with the given build of its CPU kernels (every build
    /// gives the same values; tests and benchmarks compare them). A build above
    /// [`extremal_ops::Kernels::detected`] falls back to the detected one.
    ///
    /// # Shapes
    /// As [`MaskGenerator::generate_full`].
    pub fn generate_full_with(&self, params: &Tensor, kernels: extremal_ops::Kernels) -> Result<Tensor> {
        let (_, one, h, w) = params.dims4()?;
        if one != 1 || (h, w) != self.shape_in {
            return Err(Error::Invalid(format!(
                "mask parameters of shape {:?}; the generator expects (K, 1, {}, {})",
                params.dims(),
                self.shape_in.0,
                self.shape_in.1
            )));
        }
        // Computed in f32 as TorchRay does, and returned in the parameters' dtype.
        let p = params.to_device(&candle_core::Device::Cpu)?.to_dtype(DType::F32)?;
        let full = p.contiguous()?.apply_op1(Generate {
            g: self.clone(),
            kernels: kernels.min(extremal_ops::Kernels::detected()),
        })?;
        Ok(full.to_device(params.device())?.to_dtype(params.dtype())?)
    }

    /// The visible part of full masks: the centre `(H, W)` window.
    ///
    /// # Shapes
    /// - `full`: `(K, 1, H_out, W_out)`; returns `(K, 1, H, W)`.
    pub fn crop(&self, full: &Tensor) -> Result<Tensor> {
        Ok(full
            .narrow(2, self.margin, self.shape.0)?
            .narrow(3, self.margin, self.shape.1)?)
    }

    /// The parameters of each mask zero-padded by `padding` on every side, so that every tap
    /// of every pixel reads inside: `(K, h + 2p, w + 2p)`, row-major.
    pub(super) fn padded(&self, params: &[f32], k: usize) -> (Vec<f32>, usize) {
        let (h, w) = self.shape_in;
        let pad = self.padding;
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        let mut out = vec![0f32; k * hp * wp];
        for ki in 0..k {
            for y in 0..h {
                let dst = (ki * hp + y + pad) * wp + pad;
                out[dst..dst + w].copy_from_slice(&params[(ki * h + y) * w..][..w]);
            }
        }
        (out, wp)
    }
}
