//! The smooth-mask generator's row kernels (forward and backward, built for AVX-512, AVX2 +
//! FMA and portable code, chosen at run time: [`Kernels`]) and its custom op.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use extremal_ops::Kernels;
use rayon::prelude::*;

use super::generator::MaskGenerator;

/// The soft-max pooling's coldness.
pub(super) const COLDNESS: f32 = 20.0;

/// `exp(x)` for `x ≤ 0` in f32 (Cephes' `expf`: range reduction by ln 2 and a degree-6
/// polynomial, within 2 ulp), written without branches so that a loop of it vectorises.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients, as published
fn exp_neg(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = r * r;
    let y = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r
        + 5.000_000_1e-1;
    let y = y * z + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Scratch of one output row: per tap and pixel the weighted parameter `m` and its `e`, then
/// per pixel the running max, Σe and Σm·e, and the nearest-upsampled parameter rows.
struct RowScratch {
    m: Vec<f32>,
    e: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    dot: Vec<f32>,
    up: Vec<f32>,
    coef: Vec<f32>,
}

impl RowScratch {
    fn new(g: &MaskGenerator) -> Self {
        let taps = 2 * g.radius + 1;
        let wo = g.shape_out.1;
        let wp = g.shape_in.1 + 2 * g.padding;
        Self {
            m: vec![0.0; taps * taps * wo],
            e: vec![0.0; taps * taps * wo],
            max: vec![0.0; wo],
            sum: vec![0.0; wo],
            dot: vec![0.0; wo],
            up: vec![0.0; taps * wp * g.step],
            coef: vec![0.0; wo],
        }
    }
}

/// Pools output row `uy` of one mask from its padded parameters `pp` (row length `wp`):
/// leaves `m`, every tap's `e = exp(20 (m − max))` (which the backward reuses instead of
/// computing each exponential again), `max`, `sum` (Σe) and `dot` (Σm·e) for every pixel of
/// the row. Pixels are the inner loop, so each step is a contiguous vector operation; the taps
/// are summed in order.
#[inline(always)]
fn pool_row(g: &MaskGenerator, pp: &[f32], wp: usize, uy: usize, s: &mut RowScratch) {
    let taps = 2 * g.radius + 1;
    let (wo, step) = (g.shape_out.1, g.step);
    let a = uy / step;
    let upw = wp * step;
    // up[ky][j] = parameter (a + ky, j / step): the nearest-upsampled grid rows.
    for ky in 0..taps {
        let src = &pp[(a + ky) * wp..(a + ky + 1) * wp];
        for (cell, chunk) in s.up[ky * upw..(ky + 1) * upw].chunks_mut(step).enumerate() {
            chunk.fill(src[cell]);
        }
    }
    let wt = &g.weight[uy * taps * taps * wo..(uy + 1) * taps * taps * wo];
    s.max.fill(f32::NEG_INFINITY);
    for ky in 0..taps {
        for kx in 0..taps {
            let t = ky * taps + kx;
            let up = &s.up[ky * upw + kx * step..][..wo];
            let (m, w) = (&mut s.m[t * wo..(t + 1) * wo], &wt[t * wo..(t + 1) * wo]);
            for (((m, &w), &p), mx) in m.iter_mut().zip(w).zip(up).zip(s.max.iter_mut()) {
                *m = w * p;
                *mx = mx.max(*m);
            }
        }
    }
    s.sum.fill(0.0);
    s.dot.fill(0.0);
    for t in 0..taps * taps {
        let (m, es) = (&s.m[t * wo..(t + 1) * wo], &mut s.e[t * wo..(t + 1) * wo]);
        for ((((&m, &mx), sum), dot), es) in m
            .iter()
            .zip(&s.max)
            .zip(s.sum.iter_mut())
            .zip(s.dot.iter_mut())
            .zip(es.iter_mut())
        {
            let e = exp_neg(COLDNESS * (m - mx));
            *es = e;
            *sum += e;
            *dot += m * e;
        }
    }
}

/// One output row of full masks.
#[inline(always)]
fn generate_row(g: &MaskGenerator, pp: &[f32], wp: usize, uy: usize, out: &mut [f32], s: &mut RowScratch) {
    pool_row(g, pp, wp, uy, s);
    for ((o, &d), &sum) in out.iter_mut().zip(&s.dot).zip(&s.sum) {
        *o = (d / sum).clamp(0.0, 1.0);
    }
}

/// The gradient of one output row with respect to the padded parameters, added to `acc`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn generate_row_grad(
    g: &MaskGenerator,
    pp: &[f32],
    wp: usize,
    uy: usize,
    grad: &[f32],
    acc: &mut [f32],
    s: &mut RowScratch,
) {
    let taps = 2 * g.radius + 1;
    let (wo, step) = (g.shape_out.1, g.step);
    let a = uy / step;
    pool_row(g, pp, wp, uy, s);
    // Per pixel: go / Σe where the clamp passes the gradient (0 ≤ v ≤ 1, PyTorch's rule at
    // the bounds), else 0; `dot` becomes v.
    for (((d, &sum), &go), c) in s.dot.iter_mut().zip(&s.sum).zip(grad).zip(s.coef.iter_mut()) {
        let v = *d / sum;
        *d = v;
        *c = if (0.0..=1.0).contains(&v) { go / sum } else { 0.0 };
    }
    let wt = &g.weight[uy * taps * taps * wo..(uy + 1) * taps * taps * wo];
    for ky in 0..taps {
        for kx in 0..taps {
            let t = ky * taps + kx;
            let (m, w) = (&mut s.m[t * wo..(t + 1) * wo], &wt[t * wo..(t + 1) * wo]);
            let e = &s.e[t * wo..(t + 1) * wo];
            // d v / d m_t = s_t (1 + c (m_t − v)) with s_t = e_t / Σe; d m_t / d p = weight.
            for ((((m, &w), &e), &v), &c) in m.iter_mut().zip(w).zip(e).zip(&s.dot).zip(&s.coef) {
                *m = c * e * (1.0 + COLDNESS * (*m - v)) * w;
            }
            // Pixels of one grid cell share the parameter: sum them into it.
            let row = &mut acc[(a + ky) * wp + kx..];
            for (cell, chunk) in m.chunks(step).enumerate() {
                row[cell] += chunk.iter().sum::<f32>();
            }
        }
    }
}

/// A module `$name` of the row kernels compiled with the target features `$features` (chosen
/// at run time; FMA instructions are not generated from separate multiplies and adds, so the
/// values are the portable build's).
macro_rules! row_kernels {
    ($name:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        mod $name {
            use super::*;

            #[target_feature(enable = $features)]
            pub(super) fn generate_row(
                g: &MaskGenerator,
                pp: &[f32],
                wp: usize,
                uy: usize,
                out: &mut [f32],
                s: &mut RowScratch,
            ) {
                super::generate_row(g, pp, wp, uy, out, s)
            }

            #[target_feature(enable = $features)]
            pub(super) fn generate_row_grad(
                g: &MaskGenerator,
                pp: &[f32],
                wp: usize,
                uy: usize,
                grad: &[f32],
                acc: &mut [f32],
                s: &mut RowScratch,
            ) {
                super::generate_row_grad(g, pp, wp, uy, grad, acc, s)
            }
        }
    };
}

row_kernels!(avx2, "avx2,fma");
row_kernels!(avx512, "avx512f,avx2,fma");

pub(super) struct Generate {
    pub(super) g: MaskGenerator,
    /// The build of the row kernels (at most [`Kernels::detected`]).
    pub(super) kernels: Kernels,
}

impl CustomOp1 for Generate {
    fn name(&self) -> &'static str {
        "extremal-mask-generator"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let k = l.dims()[0];
        let (a, b) = l.contiguous_offsets().expect("contiguous parameters");
        let (pp, wp) = g.padded(&s.as_slice::<f32>()?[a..b], k);
        let (ho, wo) = g.shape_out;
        let hp = g.shape_in.0 + 2 * g.padding;
        let kernels = self.kernels;
        // Rows in (uy, mask) order, so that the masks of one row reuse its kernel weights
        // from cache; transposed to (mask, uy) at the end.
        let mut rows = vec![0f32; ho * k * wo];
        rows.par_chunks_mut(k * wo).enumerate().for_each_init(
            || RowScratch::new(g),
            |s, (uy, rs)| {
                for (ki, o) in rs.chunks_mut(wo).enumerate() {
                    let pp = &pp[ki * hp * wp..(ki + 1) * hp * wp];
                    #[cfg(target_arch = "x86_64")]
                    match kernels {
                        // SAFETY (both arms): the CPU has the build's features (`kernels` is at
                        // most `Kernels::detected()`).
                        Kernels::Avx512 => unsafe { avx512::generate_row(g, pp, wp, uy, o, s) },
                        Kernels::Avx2 => unsafe { avx2::generate_row(g, pp, wp, uy, o, s) },
                        Kernels::Portable => generate_row(g, pp, wp, uy, o, s),
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    generate_row(g, pp, wp, uy, o, s);
                }
            },
        );
        let mut out = vec![0f32; k * ho * wo];
        for (uy, rs) in rows.chunks(k * wo).enumerate() {
            for (ki, r) in rs.chunks(wo).enumerate() {
                out[(ki * ho + uy) * wo..][..wo].copy_from_slice(r);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((k, 1, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = &self.g;
        let k = arg.dim(0)?;
        let (pp, wp) = g.padded(&super::f32_values(arg)?, k);
        let grad = super::f32_values(&grad.to_dtype(DType::F32)?)?;
        let (ho, wo) = g.shape_out;
        let (h, w) = g.shape_in;
        let hp = h + 2 * g.padding;
        let kernels = self.kernels;
        // Fixed blocks of rows, each with its own accumulator, summed in block order: the
        // result does not depend on how rayon schedules the blocks (a `fold`/`reduce` would
        // sum in a run-dependent order, and the masks would differ from run to run).
        const ROWS: usize = 8;
        let partials: Vec<Vec<f32>> = (0..ho.div_ceil(ROWS))
            .into_par_iter()
            .map(|block| {
                let (mut acc, mut s) = (vec![0f32; k * hp * wp], RowScratch::new(g));
                for uy in block * ROWS..((block + 1) * ROWS).min(ho) {
                    // All masks of one row together: its kernel weights stay in cache.
                    for ki in 0..k {
                        let pp = &pp[ki * hp * wp..(ki + 1) * hp * wp];
                        let acc_k = &mut acc[ki * hp * wp..(ki + 1) * hp * wp];
                        let gr = &grad[(ki * ho + uy) * wo..][..wo];
                        #[cfg(target_arch = "x86_64")]
                        match kernels {
                            // SAFETY (both arms): the CPU has the build's features.
                            Kernels::Avx512 => unsafe { avx512::generate_row_grad(g, pp, wp, uy, gr, acc_k, &mut s) },
                            Kernels::Avx2 => unsafe { avx2::generate_row_grad(g, pp, wp, uy, gr, acc_k, &mut s) },
                            Kernels::Portable => generate_row_grad(g, pp, wp, uy, gr, acc_k, &mut s),
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        generate_row_grad(g, pp, wp, uy, gr, acc_k, &mut s);
                    }
                }
                acc
            })
            .collect();
        let mut gp = vec![0f32; k * hp * wp];
        for part in &partials {
            gp.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
        // Crop the padding off.
        let mut out = vec![0f32; k * h * w];
        for ki in 0..k {
            for y in 0..h {
                let src = (ki * hp + y + g.padding) * wp + g.padding;
                out[(ki * h + y) * w..][..w].copy_from_slice(&gp[src..src + w]);
            }
        }
        Ok(Some(Tensor::from_vec(out, (k, 1, h, w), arg.device())?))
    }
}
