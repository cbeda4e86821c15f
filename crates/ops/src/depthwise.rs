//! Depthwise convolution (one filter per channel) as a custom op: candle runs grouped
//! convolutions as one convolution per group, which is very slow for thousands of groups.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};

use rayon::prelude::*;

use crate::act::{act_grad, activate_serial, mask_row, Activation};
use crate::{contiguous_slice, Conv2dConfig, Result};

const OP: &str = "depthwise conv2d";

#[derive(Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    dilation: usize,
    top: isize,
    left: isize,
}

impl Geometry {
    /// Rows and columns of the zero-padded plane that the outputs read.
    fn padded(&self) -> (usize, usize) {
        (
            (self.oh - 1) * self.stride + (self.kh - 1) * self.dilation + 1,
            (self.ow - 1) * self.stride + (self.kw - 1) * self.dilation + 1,
        )
    }

    /// Length of the scratch of one padded plane split into `stride` column phases.
    fn phased_len(&self) -> usize {
        let (ph, pw) = self.padded();
        self.stride * ph * pw.div_ceil(self.stride)
    }

    /// Where padded pixel `(i, j)` lives in the phased scratch: column phase `j % stride`,
    /// so that the `stride`-spaced columns an output row reads are contiguous.
    #[inline(always)]
    fn phased(&self, i: usize, j: usize) -> usize {
        let (ph, pw) = self.padded();
        let (s, pws) = (self.stride, pw.div_ceil(self.stride));
        ((j % s) * ph + i) * pws + j / s
    }

    /// For each input row inside the padded window, calls `f(src, dst)` for every run of
    /// pixels: `src + t` (in the plane) lives at `dst + t` of the phased scratch, `t` up to
    /// the run's length (the third argument). One run per row and column phase.
    #[inline(always)]
    fn runs(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (ph, pw) = self.padded();
        let (s, pws) = (self.stride, pw.div_ceil(self.stride));
        let (top, left) = (self.top as usize, self.left as usize);
        // Columns x of the input with x + left < pw.
        let cols = pw.saturating_sub(left).min(self.w);
        for y in 0..self.h.min(ph.saturating_sub(top)) {
            let i = y + top;
            for r in 0..s {
                // Input columns x with (x + left) % s == r, x < cols.
                let x0 = (r + s - left % s) % s;
                if x0 >= cols {
                    continue;
                }
                let len = (cols - x0).div_ceil(s);
                let j0 = x0 + left;
                f(y * self.w + x0, (r * ph + i) * pws + j0 / s, len);
            }
        }
    }

    /// Calls `f(w_index, offset)` for each filter tap and output row `oy`: the row's outputs
    /// read the phased scratch at `offset..offset + OW`.
    #[inline(always)]
    fn taps(&self, oy: usize, mut f: impl FnMut(usize, usize)) {
        for ky in 0..self.kh {
            let i = oy * self.stride + ky * self.dilation;
            for kx in 0..self.kw {
                f(ky * self.kw + kx, self.phased(i, kx * self.dilation));
            }
        }
    }
}

fn geometry(x: (usize, usize, usize, usize), k: (usize, usize), cfg: &Conv2dConfig) -> Geometry {
    let (n, c, h, w) = x;
    let p = cfg.padding;
    let oh = (h + p.top + p.bottom - (k.0 - 1) * cfg.dilation - 1) / cfg.stride + 1;
    let ow = (w + p.left + p.right - (k.1 - 1) * cfg.dilation - 1) / cfg.stride + 1;
    Geometry {
        n,
        c,
        h,
        w,
        kh: k.0,
        kw: k.1,
        oh,
        ow,
        stride: cfg.stride,
        dilation: cfg.dilation,
        top: p.top as isize,
        left: p.left as isize,
    }
}

/// Depthwise convolution; with constant weights, `bias` and `act` are fused into the op.
pub(crate) fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    cfg: &Conv2dConfig,
) -> Result<Tensor> {
    let (_, _, kh, kw) = weight.dims4()?;
    let g = geometry(x.dims4()?, (kh, kw), cfg);
    let fuse = !weight.track_op() && bias.is_none_or(|b| !b.track_op());
    let op = Depthwise {
        g,
        part: Part::Forward,
        bias: if fuse {
            bias.map(|b| b.contiguous()).transpose()?
        } else {
            None
        },
        act: if fuse { act } else { Activation::None },
        output: None,
    };
    let y = x.contiguous()?.apply_op2(&weight.contiguous()?, op)?;
    if fuse {
        return Ok(y);
    }
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, g.c, 1, 1))?)?,
        None => y,
    };
    act.apply(&y)
}

#[derive(Clone, Copy)]
enum Part {
    /// `(x, w) -> y`
    Forward,
    /// `(grad_y, w) -> grad_x`
    GradInput,
    /// `(x, grad_y) -> grad_w`
    GradWeight,
}

struct Depthwise {
    g: Geometry,
    part: Part,
    /// Fused bias (forward only).
    bias: Option<Tensor>,
    /// Fused activation: applied by the forward; the input-gradient part reads its derivative
    /// from `output`.
    act: Activation,
    /// The forward's output (input-gradient part with an activation only).
    output: Option<Tensor>,
}

/// The plane `x` copied into the (zeroed) phased scratch `buf`.
#[inline(always)]
fn fill<T: WithDType>(g: &Geometry, buf: &mut [T], x: &[T]) {
    let s = g.stride;
    buf.fill(T::zero());
    g.runs(|src, dst, len| {
        for (d, &v) in buf[dst..dst + len].iter_mut().zip(x[src..].iter().step_by(s)) {
            *d = v;
        }
    });
}

/// One output plane: `y = act(bias + Σ_taps w · x_shifted)`, row by row (each row stays in L1).
#[inline(always)]
fn forward_plane<T: WithDType>(g: &Geometry, x: &[T], w: &[T], bias: T, act: Activation, buf: &mut [T], y: &mut [T]) {
    let ow = g.ow;
    fill(g, buf, x);
    for (oy, row) in y.chunks_mut(ow).enumerate() {
        row.fill(bias);
        g.taps(oy, |wi, off| {
            let wv = w[wi];
            for (y, &x) in row.iter_mut().zip(&buf[off..off + ow]) {
                *y += x * wv;
            }
        });
        activate_serial(row, act);
    }
}

/// One input-gradient plane: the transposed sweep into the phased scratch, then cropped. With
/// an activation, `gy` is first masked by its derivative, read from the forward output `y`
/// (one row at a time, into `row_buf`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grad_input_plane<T: WithDType>(
    g: &Geometry,
    gy: &[T],
    y: Option<&[T]>,
    act: Activation,
    w: &[T],
    buf: &mut [T],
    row_buf: &mut [T],
    gx: &mut [T],
) {
    let (s, ow) = (g.stride, g.ow);
    buf.fill(T::zero());
    for (oy, row) in gy.chunks(ow).enumerate() {
        let row: &[T] = match y {
            Some(y) => {
                mask_row(row, &y[oy * ow..(oy + 1) * ow], act, &mut row_buf[..ow]);
                &row_buf[..ow]
            }
            None => row,
        };
        g.taps(oy, |wi, off| {
            let wv = w[wi];
            for (d, &gy) in buf[off..off + ow].iter_mut().zip(row) {
                *d += gy * wv;
            }
        });
    }
    g.runs(|src, dst, len| {
        for (d, &v) in gx[src..].iter_mut().step_by(s).zip(&buf[dst..dst + len]) {
            *d = v;
        }
    });
}

/// The same kernels compiled for AVX2 + FMA (chosen at run time; FMA instructions are not
/// generated from separate multiplies and adds, so results equal the baseline build's).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn forward_plane<T: WithDType>(
        g: &Geometry,
        x: &[T],
        w: &[T],
        bias: T,
        act: Activation,
        buf: &mut [T],
        y: &mut [T],
    ) {
        super::forward_plane(g, x, w, bias, act, buf, y)
    }

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn grad_input_plane<T: WithDType>(
        g: &Geometry,
        gy: &[T],
        y: Option<&[T]>,
        act: Activation,
        w: &[T],
        buf: &mut [T],
        row_buf: &mut [T],
        gx: &mut [T],
    ) {
        super::grad_input_plane(g, gy, y, act, w, buf, row_buf, gx)
    }
}

/// Whether this CPU runs the AVX2 + FMA builds of the kernels (detected once).
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

impl Depthwise {
    fn run<T: WithDType>(&self, a: &[T], b: &[T]) -> candle_core::Result<Vec<T>> {
        let g = self.g;
        let (xs, ys, ks, ow) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw, g.ow);
        let scratch = || vec![T::zero(); g.phased_len()];
        let avx2 = has_avx2();
        Ok(match self.part {
            Part::Forward => {
                let bias: Option<Vec<T>> = match &self.bias {
                    Some(t) => Some(t.flatten_all()?.to_vec1::<T>()?),
                    None => None,
                };
                // Every row is filled with the bias before it accumulates.
                let mut y = crate::output_vec(g.n * g.c * ys);
                y.par_chunks_mut(ys).enumerate().for_each_init(scratch, |buf, (nc, y)| {
                    let (x, w) = (&a[nc * xs..][..xs], &b[(nc % g.c) * ks..][..ks]);
                    let b0 = bias.as_ref().map_or(T::zero(), |b| b[nc % g.c]);
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                        unsafe { avx2::forward_plane(&g, x, w, b0, self.act, buf, y) };
                        return;
                    }
                    let _ = avx2;
                    forward_plane(&g, x, w, b0, self.act, buf, y);
                });
                y
            }
            Part::GradInput => {
                let output = match &self.output {
                    Some(t) => Some(t.flatten_all()?.to_vec1::<T>()?),
                    None => None,
                };
                let act = self.act;
                let mut gx = vec![T::zero(); g.n * g.c * xs];
                let scratch = || (scratch(), vec![T::zero(); ow]);
                gx.par_chunks_mut(xs)
                    .enumerate()
                    .for_each_init(scratch, |(buf, row_buf), (nc, gx)| {
                        let (gy, w) = (&a[nc * ys..][..ys], &b[(nc % g.c) * ks..][..ks]);
                        let y = output.as_ref().map(|y| &y[nc * ys..][..ys]);
                        #[cfg(target_arch = "x86_64")]
                        if avx2 {
                            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                            unsafe { avx2::grad_input_plane(&g, gy, y, act, w, buf, row_buf, gx) };
                            return;
                        }
                        grad_input_plane(&g, gy, y, act, w, buf, row_buf, gx);
                    });
                gx
            }
            Part::GradWeight => {
                let mut gw = vec![T::zero(); g.c * ks];
                gw.par_chunks_mut(ks)
                    .enumerate()
                    .for_each_init(scratch, |buf, (c, gw)| {
                        for n in 0..g.n {
                            let nc = n * g.c + c;
                            fill(&g, buf, &a[nc * xs..][..xs]);
                            for (oy, row) in b[nc * ys..][..ys].chunks(ow).enumerate() {
                                g.taps(oy, |wi, off| {
                                    gw[wi] += buf[off..off + ow]
                                        .iter()
                                        .zip(row)
                                        .fold(T::zero(), |acc, (&x, &gy)| acc + x * gy);
                                });
                            }
                        }
                    });
                gw
            }
        })
    }
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "extremal-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = &self.g;
        let shape = match self.part {
            Part::Forward => Shape::from((g.n, g.c, g.oh, g.ow)),
            Part::GradInput => Shape::from((g.n, g.c, g.h, g.w)),
            Part::GradWeight => Shape::from((g.c, 1, g.kh, g.kw)),
        };
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(self.run(
                contiguous_slice::<f32>(s1, l1, OP)?,
                contiguous_slice::<f32>(s2, l2, OP)?,
            )?),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(self.run(
                contiguous_slice::<f64>(s1, l1, OP)?,
                contiguous_slice::<f64>(s2, l2, OP)?,
            )?),
            _ => candle_core::bail!("depthwise conv2d: only f32 and f64 inputs of one dtype are supported"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let with_act = self.act != Activation::None;
        let gx = if x.track_op() {
            // The activation's derivative is applied inside the kernel, row by row.
            let op = Depthwise {
                g: self.g,
                part: Part::GradInput,
                bias: None,
                act: self.act,
                output: with_act.then(|| res.clone()),
            };
            Some(grad.apply_op2_no_bwd(w, &op)?)
        } else {
            None
        };
        let gw = if w.track_op() {
            let op = Depthwise {
                g: self.g,
                part: Part::GradWeight,
                bias: None,
                act: Activation::None,
                output: None,
            };
            Some(x.apply_op2_no_bwd(&act_grad(&grad, res, self.act)?, &op)?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}
