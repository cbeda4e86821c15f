//! How the optimised image is parametrised: plain pixels (Mahendran & Vedaldi) or a
//! decorrelated-colour Fourier spectrum (Olah et al. 2017), which favours natural-looking
//! images under the same number of steps.

use std::str::FromStr;

use candle_core::{DType, Device, Tensor, Var};
use extremal_ops::random::SeededRng;
use extremal_ops::{irfft2, sigmoid};

use crate::{Error, Result};

/// The image parameterisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Parameterisation {
    /// The pixels themselves, in the model's normalised input space.
    #[default]
    Pixel,
    /// A half spectrum per colour channel (Lucid's `fft_image`), scaled by `1/frequency`,
    /// inverse-transformed ([`irfft2`], orthonormal) and mixed by a decorrelating colour
    /// matrix.
    Fourier,
}

impl FromStr for Parameterisation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pixel" => Ok(Self::Pixel),
            "fourier" => Ok(Self::Fourier),
            other => Err(Error::Invalid(format!(
                "unknown parameterisation `{other}`; use pixel or fourier"
            ))),
        }
    }
}

/// The square root of the colour covariance of ImageNet photographs (Lucid's
/// `color_correlation_svd_sqrt`), scaled so that its largest column has norm 1.
const COLOUR: [[f64; 3]; 3] = [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]];

/// Lucid's colour decorrelation matrix: [`COLOUR`] divided by the largest norm of its
/// columns (`color_correlation_normalized`). A decorrelated image `v` has colours `M v`.
pub fn colour_decorrelation() -> [[f64; 3]; 3] {
    let max_col = (0..3)
        .map(|d| (0..3).map(|r| COLOUR[r][d] * COLOUR[r][d]).sum::<f64>().sqrt())
        .fold(0.0, f64::max);
    COLOUR.map(|row| row.map(|v| v / max_col))
}

/// Lucid's "magic" divisor of the Fourier image before the sigmoid (it reduces saturation).
const LUCID_FOURIER_DIVISOR: f64 = 4.0;

/// Optimisable parameters that render a batch of images.
#[derive(Debug)]
pub struct ImageParam {
    kind: Parameterisation,
    var: Var,
    /// Fourier only: the `1/f` scale of the half spectrum, `(1, 1, H, W/2 + 1, 1)`, and `W`.
    spectrum: Option<(Tensor, usize)>,
    /// The colour decorrelation matrix `(3, 3)`, when the parameters are decorrelated colour.
    colour: Option<Tensor>,
    /// Lucid's range: the image is `sigmoid(…)` in [0, 1] (the Fourier image divided by 4
    /// first) instead of unbounded in the model's normalised space.
    squash: bool,
}

/// `1 / max(|f|, 1/max(H, W))^decay` over the half spectrum (`f` in cycles per pixel), Lucid's
/// `rfft2d_freqs` scaling.
///
/// # Shapes
/// - returns: `(1, 1, H, W/2 + 1, 1)`.
fn spectrum_scale(h: usize, w: usize, decay: f64, dtype: DType, dev: &Device) -> Result<Tensor> {
    let wf = w / 2 + 1;
    let fmin = 1.0 / h.max(w) as f64;
    let mut scale = vec![0f64; h * wf];
    for i in 0..h {
        let fy = i.min(h - i) as f64 / h as f64;
        for j in 0..wf {
            let fx = j as f64 / w as f64;
            scale[i * wf + j] = 1.0 / (fy * fy + fx * fx).sqrt().max(fmin).powf(decay);
        }
    }
    Ok(Tensor::from_vec(scale, (1, 1, h, wf, 1), dev)?.to_dtype(dtype)?)
}

impl ImageParam {
    /// Random images of `shape = (N, 3, H, W)` in the model's normalised space, whose per-pixel
    /// colour norm is `norm` on average, from `seed` (the start of an inversion).
    pub fn random(
        kind: Parameterisation,
        shape: (usize, usize, usize, usize),
        norm: f64,
        seed: u64,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let p = Self::build(kind, shape, seed, 1.0, false, dtype, dev)?;
        p.rescale(norm)?;
        Ok(p)
    }

    /// Lucid's start of a feature visualization: parameters drawn from `N(0, 0.01²)`, colour
    /// decorrelated, and the image `sigmoid(M v)` in [0, 1] (`v` the pixels, or the inverse FFT
    /// of the `1/f`-scaled half spectrum divided by 4), as Lucid's `image(…, fft=…,
    /// decorrelate=True)`.
    pub fn lucid(
        kind: Parameterisation,
        shape: (usize, usize, usize, usize),
        seed: u64,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        Self::build(kind, shape, seed, 0.01, true, dtype, dev)
    }

    /// Lucid's images with the given parameters (shaped as [`ImageParam::var`] of
    /// [`ImageParam::lucid`]), to check the parameterisation against a reference.
    pub fn lucid_from(kind: Parameterisation, params: &Tensor, width: usize) -> Result<Self> {
        let p = Self::build(
            kind,
            (params.dim(0)?, 3, params.dim(2)?, width),
            0,
            0.0,
            true,
            params.dtype(),
            params.device(),
        )?;
        if p.var.dims() != params.dims() {
            return Err(Error::Invalid(format!(
                "parameters of shape {:?} do not fit a width-{width} {kind:?} image (shape {:?})",
                params.dims(),
                p.var.dims()
            )));
        }
        p.var.set(params)?;
        Ok(p)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        kind: Parameterisation,
        shape: (usize, usize, usize, usize),
        seed: u64,
        sd: f64,
        squash: bool,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let (n, c, h, w) = shape;
        let decorrelate = squash || kind == Parameterisation::Fourier;
        if decorrelate && c != 3 {
            return Err(Error::Invalid(format!(
                "the decorrelated colour space is RGB's: it needs 3 channels, got {c}"
            )));
        }
        let colour = if decorrelate {
            let m: Vec<f64> = colour_decorrelation().iter().flatten().copied().collect();
            Some(Tensor::from_vec(m, (3, 3), dev)?.to_dtype(dtype)?)
        } else {
            None
        };
        let mut rng = SeededRng::new(seed);
        let (var, spectrum) = match kind {
            Parameterisation::Pixel => (rng.normal_tensor(&[n, c, h, w], sd, dev)?, None),
            Parameterisation::Fourier => (
                rng.normal_tensor(&[n, c, h, w / 2 + 1, 2], sd, dev)?,
                Some((spectrum_scale(h, w, 1.0, dtype, dev)?, w)),
            ),
        };
        Ok(Self {
            kind,
            var: Var::from_tensor(&var.to_dtype(dtype)?)?,
            spectrum,
            colour,
            squash,
        })
    }

    /// Scales the parameters so that the rendered images have per-pixel norm `norm`.
    fn rescale(&self, norm: f64) -> Result<()> {
        let now = crate::natural_norm(&self.image()?)?;
        if now > 0.0 {
            self.var.set(&(self.var.as_tensor() * (norm / now))?)?;
        }
        Ok(())
    }

    /// The parameterisation.
    pub fn kind(&self) -> Parameterisation {
        self.kind
    }

    /// The optimised variable.
    pub fn var(&self) -> &Var {
        &self.var
    }

    /// The images, differentiable with respect to [`ImageParam::var`].
    ///
    /// # Shapes
    /// - returns: `(N, 3, H, W)`.
    pub fn image(&self) -> Result<Tensor> {
        self.render(self.var.as_tensor())
    }

    /// The images that parameters `p` (shaped as [`ImageParam::var`]) render to.
    ///
    /// # Shapes
    /// - `p`: `(N, 3, H, W)` for pixels, `(N, 3, H, W/2 + 1, 2)` (real and imaginary parts of
    ///   the half spectrum) for Fourier.
    /// - returns: `(N, 3, H, W)`.
    pub fn render(&self, p: &Tensor) -> Result<Tensor> {
        let mut v = match &self.spectrum {
            None => p.clone(),
            Some((scale, w)) => {
                let y = irfft2(&p.broadcast_mul(scale)?, *w)?;
                if self.squash {
                    (y / LUCID_FOURIER_DIVISOR)?
                } else {
                    y
                }
            }
        };
        if let Some(m) = &self.colour {
            let (n, c, h, w) = v.dims4()?;
            let flat = v.reshape((n, c, h * w))?;
            v = m.broadcast_left(n)?.matmul(&flat)?.reshape((n, c, h, w))?;
        }
        if self.squash {
            v = sigmoid(&v)?;
        }
        Ok(v)
    }
}
