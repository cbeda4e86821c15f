//! Depthwise convolution (one filter per channel) as a custom op: candle runs grouped
//! convolutions as one convolution per group, which is very slow for thousands of groups.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};

use rayon::prelude::*;

use crate::act::{act_grad, activate_serial, mask_row, take_gradient_rule, Activation, GradientRule};
use crate::simd::Kernels;
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
        let step = oy * self.row_step();
        for (wi, &b) in base.iter().enumerate() {
            f(wi, b + step);
        }
    }

    /// How far apart in the phased scratch two output rows' reads start (`stride` padded rows).
    #[inline(always)]
    fn row_step(&self) -> usize {
        self.stride * self.padded().1.div_ceil(self.stride)
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

/// `y += a · x` over equal-length rows with `k`'s vector build for f32 (each element a
/// multiply then an add, unfused, as the scalar loop).
#[inline(always)]
fn axpy<T: WithDType>(y: &mut [T], x: &[T], a: T, k: Kernels) {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && k >= Kernels::Avx2 {
        // SAFETY: T is f32 (same layout); the CPU has the chosen build's features (`k` is at
        // most `Kernels::detected()`).
        unsafe {
            let y = &mut *(y as *mut [T] as *mut [f32]);
            let x = &*(x as *const [T] as *const [f32]);
            let a = *(&a as *const T as *const f32);
            if k == Kernels::Avx512 {
                return avx512::axpy_f32(y, x, a);
            }
            return avx2::axpy_f32(y, x, a);
        }
    }
    for (y, &x) in y.iter_mut().zip(x) {
        *y += x * a;
    }
}

/// `out[i] = bias + Σ_t w[t] · src[offsets(t) + i]`, the taps in order, with `k`'s build: on
/// AVX-512 (f32) each run of 64 outputs stays in registers across all taps, otherwise `out` is
/// filled with the bias and takes one [`axpy`] per tap. The multiplies and adds are separate
/// and in the same order in every build, so the values are the same.
#[inline(always)]
fn taps_into<T: WithDType>(
    src: &[T],
    offsets: impl Fn(usize) -> usize + Copy,
    w: &[T],
    bias: T,
    out: &mut [T],
    k: Kernels,
) {
    let n = out.len();
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && k == Kernels::Avx512 {
        assert!(
            (0..w.len()).all(|t| offsets(t) + n <= src.len()),
            "a tap reads past its plane"
        );
        // SAFETY: T is f32 (same layout); the CPU has AVX-512 F (`k` is at most
        // `Kernels::detected()`); every tap's run is in bounds (checked above).
        unsafe {
            let src = &*(src as *const [T] as *const [f32]);
            let w = &*(w as *const [T] as *const [f32]);
            let out = &mut *(out as *mut [T] as *mut [f32]);
            let bias = *(&bias as *const T as *const f32);
            return avx512::taps_into(src, offsets, w, bias, out);
        }
    }
    out.fill(bias);
    for (t, &wt) in w.iter().enumerate() {
        let o = offsets(t);
        axpy(out, &src[o..o + n], wt, k);
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

/// Depthwise convolution with `kernels`' build (at most [`Kernels::detected`]; the caller,
/// [`crate::conv2d_fused_with`], has checked the shapes); with constant weights, `bias` and
/// `act` are fused into the op.
pub(crate) fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
    cfg: &Conv2dConfig,
    kernels: Kernels,
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
        kernels,
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
    /// The build of the kernels.
    kernels: Kernels,
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
#[allow(clippy::too_many_arguments)]
fn forward_plane<T: WithDType>(
    g: &Geometry,
    base: &[usize],
    x: &[T],
    w: &[T],
    bias: T,
    act: Activation,
    buf: &mut [T],
    y: &mut [T],
    k: Kernels,
) {
    let ow = g.ow;
    let (buf, acc) = buf.split_at_mut(g.phased_len());
    fill(g, buf, x);
    let flat = g.flat_len();
    if flat > 0 {
        let pitch = g.padded().1;
        taps_into(buf, |t| base[t], w, bias, &mut acc[..flat], k);
        for (oy, row) in y.chunks_mut(ow).enumerate() {
            row.copy_from_slice(&acc[oy * pitch..][..ow]);
            activate_serial(row, act);
        }
        return;
    }
    let step = g.row_step();
    for (oy, row) in y.chunks_mut(ow).enumerate() {
        taps_into(buf, |t| base[t] + oy * step, w, bias, row, k);
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
    base: &[usize],
    gy: &[T],
    y: Option<&[T]>,
    (act, rule): (Activation, GradientRule),
    w: &[T],
    buf: &mut [T],
    row_buf: &mut [T],
    gx: &mut [T],
    k: Kernels,
) {
    let (s, ow) = (g.stride, g.ow);
    if g.flat_len() > 0 {
        // A gather instead of the transposed sweep: the (masked) gradient at the scratch's
        // row pitch after a zero margin as long as the farthest tap (`e`), and each scratch
        // value `Σ_t w[t] · e[margin − off_t + j]`, the taps in the sweep's order (the extra
        // terms are exact zeros, so the values are the sweep's).
        let pitch = g.padded().1;
        let margin = base.iter().copied().max().unwrap_or(0);
        let len = g.phased_len();
        let e = &mut row_buf[..margin + len];
        e.fill(T::zero());
        for (oy, row) in gy.chunks(ow).enumerate() {
            let dst = &mut e[margin + oy * pitch..][..ow];
            match y {
                Some(y) => mask_row(row, &y[oy * ow..(oy + 1) * ow], act, rule, dst),
                None => dst.copy_from_slice(row),
            }
        }
        taps_into(e, |t| margin - base[t], w, T::zero(), &mut buf[..len], k);
    } else {
        buf.fill(T::zero());
        for (oy, row) in gy.chunks(ow).enumerate() {
            let row: &[T] = match y {
                Some(y) => {
                    mask_row(row, &y[oy * ow..(oy + 1) * ow], act, rule, &mut row_buf[..ow]);
                    &row_buf[..ow]
                }
                None => row,
            };
            g.taps(base, oy, |wi, off| axpy(&mut buf[off..off + ow], row, w[wi], k));
        }
    }
    if s == 1 {
        g.runs(|src, dst, len| gx[src..src + len].copy_from_slice(&buf[dst..dst + len]));
        return;
    }
    g.runs(|src, dst, len| {
        for (d, &v) in gx[src..].iter_mut().step_by(s).zip(&buf[dst..dst + len]) {
            *d = v;
        }
    });
}

/// The generic plane kernels compiled with the target features `$features`, their `axpy`
/// the build `$kernels` (a module's `forward_plane` and `grad_input_plane`).
macro_rules! plane_kernels {
    ($features:literal, $kernels:expr) => {
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(super) fn forward_plane<T: WithDType>(
            g: &Geometry,
            base: &[usize],
            x: &[T],
            w: &[T],
            bias: T,
            act: Activation,
            buf: &mut [T],
            y: &mut [T],
        ) {
            super::forward_plane(g, base, x, w, bias, act, buf, y, $kernels)
        }

        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(super) fn grad_input_plane<T: WithDType>(
            g: &Geometry,
            base: &[usize],
            gy: &[T],
            y: Option<&[T]>,
            act: (Activation, GradientRule),
            w: &[T],
            buf: &mut [T],
            row_buf: &mut [T],
            gx: &mut [T],
        ) {
            super::grad_input_plane(g, base, gy, y, act, w, buf, row_buf, gx, $kernels)
        }
    };
}

/// The same kernels compiled for AVX2 + FMA (chosen at run time; FMA instructions are not
/// generated from separate multiplies and adds, so results equal the portable build's).
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

    plane_kernels!("avx2,fma", Kernels::Avx2);
}

/// The kernels compiled for AVX-512 F (chosen at run time). The f32 forward keeps each run of
/// 64 outputs in four registers across all filter taps (one load, multiply and add per tap and
/// 16 outputs, where the AVX2 build also loads and stores the accumulator), with masked loads
/// and stores for the ragged ends; the multiplies and adds are separate and in the portable
/// build's order, so the results are the same.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::*;

    /// Lanes `from..n` of a run of `n` values, as a 16-lane mask.
    #[inline(always)]
    fn lanes(n: usize, from: usize) -> __mmask16 {
        match n.saturating_sub(from) {
            0 => 0,
            m if m >= 16 => 0xffff,
            m => ((1u32 << m) - 1) as __mmask16,
        }
    }

    /// `y += a · x` on f32 rows, sixteen lanes per multiply and add, the tail masked.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn axpy_f32(y: &mut [f32], x: &[f32], a: f32) {
        let n = y.len().min(x.len());
        let va = _mm512_set1_ps(a);
        let mut i = 0;
        while i < n {
            let m = lanes(n, i);
            let p = y.as_mut_ptr().add(i);
            let v = _mm512_add_ps(
                _mm512_maskz_loadu_ps(m, p),
                _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x.as_ptr().add(i)), va),
            );
            _mm512_mask_storeu_ps(p, m, v);
            i += 16;
        }
    }

    /// [`super::taps_into`] for f32: 64 outputs at a time in registers, taps in order.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `src[offsets[t] + i]` is in bounds for every tap and `i < n`,
    /// and `out` holds `n` values.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn taps_into(
        src: &[f32],
        offsets: impl Fn(usize) -> usize + Copy,
        w: &[f32],
        bias: f32,
        out: &mut [f32],
    ) {
        let n = out.len();
        let vb = _mm512_set1_ps(bias);
        let mut start = 0;
        while start < n {
            let m = [
                lanes(n, start),
                lanes(n, start + 16),
                lanes(n, start + 32),
                lanes(n, start + 48),
            ];
            let mut acc = [vb; 4];
            for (t, &wt) in w.iter().enumerate() {
                let vw = _mm512_set1_ps(wt);
                let p = src.as_ptr().wrapping_add(offsets(t) + start);
                for r in 0..4 {
                    let v = _mm512_maskz_loadu_ps(m[r], p.wrapping_add(16 * r));
                    acc[r] = _mm512_add_ps(acc[r], _mm512_mul_ps(v, vw));
                }
            }
            let q = out.as_mut_ptr().wrapping_add(start);
            for r in 0..4 {
                _mm512_mask_storeu_ps(q.wrapping_add(16 * r), m[r], acc[r]);
            }
            start += 64;
        }
    }

    // The generic planes, their taps in registers for f32 ([`taps_into`]).
    plane_kernels!("avx512f,avx2,fma", Kernels::Avx512);
}

impl Depthwise {
    fn run<T: WithDType>(&self, a: &[T], b: &[T]) -> candle_core::Result<Vec<T>> {
        let g = self.g;
        let (xs, ys, ks, ow) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw, g.ow);
        let scratch = || vec![T::zero(); g.phased_len() + g.flat_len()];
        let base = g.tap_offsets();
        let k = self.kernels;
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
                    match k {
                        // SAFETY (each arm): the CPU has the build's features (`k` is at most
                        // `Kernels::detected()`).
                        Kernels::Avx512 => unsafe {
                            return avx512::forward_plane(&g, &base, x, w, b0, self.act, buf, y);
                        },
                        Kernels::Avx2 => unsafe {
                            return avx2::forward_plane(&g, &base, x, w, b0, self.act, buf, y);
                        },
                        Kernels::Portable => {}
                    }
                    forward_plane(&g, &base, x, w, b0, self.act, buf, y, Kernels::Portable);
                });
                y
            }
            Part::GradInput => {
                let output = match &self.output {
                    Some(t) => Some(t.flatten_all()?.to_vec1::<T>()?),
                    None => None,
                };
                let act = (self.act, self.rule);
                let mut gx = vec![T::zero(); g.n * g.c * xs];
                // A stride-1 plane's gather reads a margin as long as the farthest tap before
                // the gradient; other strides mask one row at a time.
                let row_len = if g.flat_len() > 0 {
                    base.iter().copied().max().unwrap_or(0) + g.phased_len()
                } else {
                    ow
                };
                let scratch = || (vec![T::zero(); g.phased_len()], vec![T::zero(); row_len]);
                gx.par_chunks_mut(xs)
                    .enumerate()
                    .for_each_init(scratch, |(buf, row_buf), (nc, gx)| {
                        let (gy, w) = (&a[nc * ys..][..ys], &b[(nc % g.c) * ks..][..ks]);
                        let y = output.as_ref().map(|y| &y[nc * ys..][..ys]);
                        #[cfg(target_arch = "x86_64")]
                        match k {
                            // SAFETY (each arm): the CPU has the build's features.
                            Kernels::Avx512 => unsafe {
                                return avx512::grad_input_plane(&g, &base, gy, y, act, w, buf, row_buf, gx);
                            },
                            Kernels::Avx2 => unsafe {
                                return avx2::grad_input_plane(&g, &base, gy, y, act, w, buf, row_buf, gx);
                            },
                            Kernels::Portable => {}
                        }
                        grad_input_plane(&g, &base, gy, y, act, w, buf, row_buf, gx, Kernels::Portable);
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
                kernels: self.kernels,
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
                kernels: self.kernels,
            };
            Some(x.apply_op2_no_bwd(&act_grad(&grad, res, self.act)?, &op)?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}
