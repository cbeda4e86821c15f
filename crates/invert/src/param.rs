//! How the optimised image is parametrised: plain pixels (Mahendran & Vedaldi) or a
//! decorrelated-colour Fourier spectrum (Olah et al. 2017), which favours natural-looking
//! images under the same number of steps.

use std::str::FromStr;

use candle_core::{DType, Device, Tensor, Var};
use extremal_ops::random::SeededRng;

use crate::{Error, Result};

/// The image parameterisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Parameterisation {
    /// The pixels themselves, in the model's normalised input space.
    #[default]
    Pixel,
    /// A complex spectrum per colour channel, scaled by `1/frequency`, inverse-transformed
    /// (as DFT matrix products: candle has no FFT) and mixed by a decorrelating colour matrix.
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

/// Optimisable parameters that render a batch of images.
#[derive(Debug)]
pub struct ImageParam {
    kind: Parameterisation,
    var: Var,
    /// Fourier only: (C_H, S_H, C_W, S_W, frequency scale, colour matrix).
    basis: Option<FourierBasis>,
}

#[derive(Debug)]
struct FourierBasis {
    ch: Tensor,
    sh: Tensor,
    cw: Tensor,
    sw: Tensor,
    scale: Tensor,
    colour: Tensor,
}

fn dft(n: usize, dtype: DType, dev: &Device) -> Result<(Tensor, Tensor)> {
    let mut c = vec![0f64; n * n];
    let mut s = vec![0f64; n * n];
    for j in 0..n {
        for k in 0..n {
            let a = 2.0 * std::f64::consts::PI * ((j * k) % n) as f64 / n as f64;
            c[j * n + k] = a.cos();
            s[j * n + k] = a.sin();
        }
    }
    Ok((
        Tensor::from_vec(c, (n, n), dev)?.to_dtype(dtype)?,
        Tensor::from_vec(s, (n, n), dev)?.to_dtype(dtype)?,
    ))
}

impl ImageParam {
    /// Random images of `shape = (N, 3, H, W)` whose per-pixel colour norm is `norm` on
    /// average, from `seed`.
    pub fn random(
        kind: Parameterisation,
        shape: (usize, usize, usize, usize),
        norm: f64,
        seed: u64,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let (n, c, h, w) = shape;
        let mut rng = SeededRng::new(seed);
        let init = rng.normal_tensor(&[n, c, h, w], 1.0, dev)?.to_dtype(dtype)?;
        match kind {
            Parameterisation::Pixel => {
                let p = Self {
                    kind,
                    var: Var::from_tensor(&init)?,
                    basis: None,
                };
                p.rescale(norm)?;
                Ok(p)
            }
            Parameterisation::Fourier => {
                if c != 3 {
                    return Err(Error::Invalid(format!(
                        "the Fourier parameterisation decorrelates RGB colour: it needs 3 channels, got {c}"
                    )));
                }
                let (ch, sh) = dft(h, dtype, dev)?;
                let (cw, sw) = dft(w, dtype, dev)?;
                // 1 / max(|f|, 1/max(H, W)), f in cycles per pixel.
                let fmin = 1.0 / h.max(w) as f64;
                let mut scale = vec![0f64; h * w];
                for i in 0..h {
                    let fy = i.min(h - i) as f64 / h as f64;
                    for j in 0..w {
                        let fx = j.min(w - j) as f64 / w as f64;
                        scale[i * w + j] = 1.0 / (fy * fy + fx * fx).sqrt().max(fmin);
                    }
                }
                let scale = Tensor::from_vec(scale, (1, 1, h, w), dev)?.to_dtype(dtype)?;
                let max_col = (0..3)
                    .map(|d| (0..3).map(|r| COLOUR[r][d] * COLOUR[r][d]).sum::<f64>().sqrt())
                    .fold(0.0, f64::max);
                let colour: Vec<f64> = COLOUR.iter().flatten().map(|v| v / max_col).collect();
                let colour = Tensor::from_vec(colour, (3, 3), dev)?.to_dtype(dtype)?;
                let im = rng.normal_tensor(&[n, c, h, w], 1.0, dev)?.to_dtype(dtype)?;
                let spectrum = Tensor::cat(&[init, im], 1)?; // (N, 6, H, W): real then imaginary
                let p = Self {
                    kind,
                    var: Var::from_tensor(&spectrum)?,
                    basis: Some(FourierBasis {
                        ch,
                        sh,
                        cw,
                        sw,
                        scale,
                        colour,
                    }),
                };
                p.rescale(norm)?;
                Ok(p)
            }
        }
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
    /// - `p`: `(N, 3, H, W)` for pixels, `(N, 6, H, W)` (real, then imaginary parts) for Fourier.
    /// - returns: `(N, 3, H, W)`.
    pub fn render(&self, p: &Tensor) -> Result<Tensor> {
        let Some(b) = &self.basis else {
            return Ok(p.clone());
        };
        let (n, c2, h, w) = p.dims4()?;
        let c = c2 / 2;
        let re = p.narrow(1, 0, c)?.broadcast_mul(&b.scale)?;
        let im = p.narrow(1, c, c)?.broadcast_mul(&b.scale)?;
        // Re((C_H + iS_H)(P_r + iP_i)(C_W + iS_W)) = (C_H P_r − S_H P_i) C_W − (C_H P_i + S_H P_r) S_W.
        let left = |m: &Tensor, x: &Tensor| m.broadcast_left((n, c))?.matmul(x);
        let a = (left(&b.ch, &re)? - left(&b.sh, &im)?)?;
        let bb = (left(&b.ch, &im)? + left(&b.sh, &re)?)?;
        let right = |x: &Tensor, m: &Tensor| x.matmul(&m.broadcast_left((n, c))?);
        let y = (right(&a, &b.cw)? - right(&bb, &b.sw)?)? / (h * w) as f64;
        let y = y?.reshape((n, c, h * w))?;
        let rgb = b.colour.broadcast_left(n)?.matmul(&y)?;
        Ok(rgb.reshape((n, c, h, w))?)
    }
}
