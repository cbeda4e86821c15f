//! Depthwise convolution (one filter per channel) as a custom op: candle runs grouped
//! convolutions as one convolution per group, which is very slow for thousands of groups.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};

use rayon::prelude::*;

use crate::act::{act_grad, activate_serial, mask_row, take_gradient_rule, Activation, GradientRule};
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
    /// read the phased scratch at `offset..offset + OW`. `base` holds the offsets of row 0
    /// ([`Geometry::tap_offsets`]); row `oy` is `oy · stride` padded rows further.
    #[inline(always)]
    fn taps(&self, base: &[usize], oy: usize, mut f: impl FnMut(usize, usize)) {
        let (_, pw) = self.padded();
        let step = oy * self.stride * pw.div_ceil(self.stride);
        for (wi, &b) in base.iter().enumerate() {
            f(wi, b + step);
        }
    }

    /// Stride 1 only: the length of the output plane laid out with the scratch's row pitch
    /// (`(OH − 1) · PW + OW`), over which every tap is one contiguous multiply-add.
    fn flat_len(&self) -> usize {
        if self.stride == 1 {
            (self.oh - 1) * self.padded().1 + self.ow
        } else {
            0
        }
    }

    /// The scratch offset of every filter tap for output row 0 (no divisions in the loops).
    fn tap_offsets(&self) -> Vec<usize> {
        let mut v = Vec::with_capacity(self.kh * self.kw);
        for ky in 0..self.kh {
            for kx in 0..self.kw {
                v.push(self.phased(ky * self.dilation, kx * self.dilation));
            }
        }
        v
    }
}

/// `y += a · x` over equal-length rows, eight lanes at a time (a fixed-width body that the
/// compiler turns into one vector operation, even for rows shorter than its unrolled loops).
#[inline(always)]
fn axpy<T: WithDType>(y: &mut [T], x: &[T], a: T) {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && has_avx2() {
        // SAFETY: T is f32 (same layout); the CPU has AVX (checked at run time).
        unsafe {
            let y = &mut *(y as *mut [T] as *mut [f32]);
            let x = &*(x as *const [T] as *const [f32]);
            let a = *(&a as *const T as *const f32);
            return avx2::axpy_f32(y, x, a);
        }
    }
    for (y, &x) in y.iter_mut().zip(x) {
        *y += x * a;
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
        rule: GradientRule::Standard,
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
    /// How the input-gradient part treats the activation.
    rule: GradientRule,
}

/// The plane `x` copied into the (zeroed) phased scratch `buf`.
#[inline(always)]
fn fill<T: WithDType>(g: &Geometry, buf: &mut [T], x: &[T]) {
    let s = g.stride;
    buf.fill(T::zero());
    if s == 1 {
        g.runs(|src, dst, len| buf[dst..dst + len].copy_from_slice(&x[src..src + len]));
        return;
    }
    g.runs(|src, dst, len| {
        for (d, &v) in buf[dst..dst + len].iter_mut().zip(x[src..].iter().step_by(s)) {
            *d = v;
        }
    });
}

/// One output plane: `y = act(bias + Σ_taps w · x_shifted)`. With stride 1 each tap is one
/// multiply-add over the whole plane at the scratch's row pitch (`acc`, then cropped);
/// otherwise row by row (each row stays in L1).
#[inline(always)]
fn forward_plane<T: WithDType>(g: &Geometry, x: &[T], w: &[T], bias: T, act: Activation, buf: &mut [T], y: &mut [T]) {
    let ow = g.ow;
    let (buf, acc) = buf.split_at_mut(g.phased_len());
    fill(g, buf, x);
    let base = g.tap_offsets();
    let flat = g.flat_len();
    if flat > 0 {
        let pitch = g.padded().1;
        let acc = &mut acc[..flat];
        acc.fill(bias);
        for (wi, &off) in base.iter().enumerate() {
            axpy(acc, &buf[off..off + flat], w[wi]);
        }
        for (oy, row) in y.chunks_mut(ow).enumerate() {
            row.copy_from_slice(&acc[oy * pitch..][..ow]);
            activate_serial(row, act);
        }
        return;
    }
    for (oy, row) in y.chunks_mut(ow).enumerate() {
        row.fill(bias);
        g.taps(&base, oy, |wi, off| axpy(row, &buf[off..off + ow], w[wi]));
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
    rule: GradientRule,
    w: &[T],
    buf: &mut [T],
    row_buf: &mut [T],
    gx: &mut [T],
) {
    let (s, ow) = (g.stride, g.ow);
    buf.fill(T::zero());
    let base = g.tap_offsets();
    let flat = g.flat_len();
    if flat > 0 {
        // The (masked) gradient at the scratch's row pitch, zero between rows; one
        // multiply-add per tap over the whole plane.
        let pitch = g.padded().1;
        let padded = &mut row_buf[..flat];
        for (oy, row) in gy.chunks(ow).enumerate() {
            let dst = &mut padded[oy * pitch..];
            match y {
                Some(y) => mask_row(row, &y[oy * ow..(oy + 1) * ow], act, rule, &mut dst[..ow]),
                None => dst[..ow].copy_from_slice(row),
            }
            if oy + 1 < g.oh {
                dst[ow..pitch].fill(T::zero());
            }
        }
        for (wi, &off) in base.iter().enumerate() {
            axpy(&mut buf[off..off + flat], padded, w[wi]);
        }
    } else {
        for (oy, row) in gy.chunks(ow).enumerate() {
            let row: &[T] = match y {
                Some(y) => {
                    mask_row(row, &y[oy * ow..(oy + 1) * ow], act, rule, &mut row_buf[..ow]);
                    &row_buf[..ow]
                }
                None => row,
            };
            g.taps(&base, oy, |wi, off| axpy(&mut buf[off..off + ow], row, w[wi]));
        }
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

    /// `y += a · x` on f32 rows, eight lanes per AVX multiply and add (separate, not fused:
    /// the same results as the scalar loop).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy_f32(y: &mut [f32], x: &[f32], a: f32) {
        use std::arch::x86_64::*;
        let n = y.len().min(x.len());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let p = y.as_mut_ptr().add(i);
            let v = _mm256_add_ps(
                _mm256_loadu_ps(p),
                _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(i)), va),
            );
            _mm256_storeu_ps(p, v);
            i += 8;
        }
        for j in i..n {
            y[j] += x[j] * a;
        }
    }

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
        rule: GradientRule,
        w: &[T],
        buf: &mut [T],
        row_buf: &mut [T],
        gx: &mut [T],
    ) {
        super::grad_input_plane(g, gy, y, act, rule, w, buf, row_buf, gx)
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
        let scratch = || vec![T::zero(); g.phased_len() + g.flat_len()];
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
                let (act, rule) = (self.act, self.rule);
                let mut gx = vec![T::zero(); g.n * g.c * xs];
                let scratch = || (vec![T::zero(); g.phased_len()], vec![T::zero(); ow.max(g.flat_len())]);
                gx.par_chunks_mut(xs)
                    .enumerate()
                    .for_each_init(scratch, |(buf, row_buf), (nc, gx)| {
                        let (gy, w) = (&a[nc * ys..][..ys], &b[(nc % g.c) * ks..][..ks]);
                        let y = output.as_ref().map(|y| &y[nc * ys..][..ys]);
                        #[cfg(target_arch = "x86_64")]
                        if avx2 {
                            // SAFETY: the CPU has AVX2 and FMA (checked at run time).
                            unsafe { avx2::grad_input_plane(&g, gy, y, act, rule, w, buf, row_buf, gx) };
                            return;
                        }
                        grad_input_plane(&g, gy, y, act, rule, w, buf, row_buf, gx);
                    });
                gx
            }
            Part::GradWeight => {
                let mut gw = vec![T::zero(); g.c * ks];
                gw.par_chunks_mut(ks)
                    .enumerate()
                    .for_each_init(scratch, |buf, (c, gw)| {
                        let base = g.tap_offsets();
                        for n in 0..g.n {
                            let nc = n * g.c + c;
                            fill(&g, buf, &a[nc * xs..][..xs]);
                            for (oy, row) in b[nc * ys..][..ys].chunks(ow).enumerate() {
                                g.taps(&base, oy, |wi, off| {
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
                rule: if self.act == Activation::None {
                    GradientRule::Standard
                } else {
                    take_gradient_rule()
                },
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
                rule: GradientRule::Standard,
            };
            Some(x.apply_op2_no_bwd(&act_grad(&grad, res, self.act)?, &op)?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}
