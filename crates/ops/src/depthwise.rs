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

    /// How many input rows and columns lie inside the padded window that the outputs read
    /// (`y + top < PH`, `x + left < PW`).
    #[inline(always)]
    fn inside(&self) -> (usize, usize) {
        let (ph, pw) = self.padded();
        (
            ph.saturating_sub(self.top as usize).min(self.h),
            pw.saturating_sub(self.left as usize).min(self.w),
        )
    }

    /// For each input row inside the padded window, calls `f(src, dst)` for every run of
    /// pixels: `src + t` (in the plane) lives at `dst + t` of the phased scratch, `t` up to
    /// the run's length (the third argument). One run per row and column phase.
    #[inline(always)]
    fn runs(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (ph, pw) = self.padded();
        let (s, pws) = (self.stride, pw.div_ceil(self.stride));
        let (top, left) = (self.top as usize, self.left as usize);
        let (rows, cols) = self.inside();
        for y in 0..rows {
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

/// Planes per group of the channel-interleaved forward (one AVX-512 f32 vector).
const LANES: usize = 16;

/// Outputs of a row computed together by the channel-interleaved forward (each a vector of
/// [`LANES`] planes, its accumulator in registers across all taps).
const ROW_BLOCK: usize = 4;

/// How the depthwise forward lays out its work. Every layout gives the same values (each
/// output is the bias plus the taps in order, the multiply and the add separate); they differ
/// in speed, and tests and benchmarks compare them ([`set_depthwise_layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DepthwiseLayout {
    /// [`DepthwiseLayout::Interleaved`] where it is faster, else [`DepthwiseLayout::Planes`].
    #[default]
    Auto,
    /// One plane at a time, the vectors along its rows (or, at stride 1, along the whole
    /// plane at the padded row pitch).
    Planes,
    /// Sixteen planes at a time, one vector across them per pixel: every lane busy however
    /// small the plane, for the price of interleaving the planes and back.
    Interleaved,
}

thread_local! {
    static LAYOUT: std::cell::Cell<DepthwiseLayout> = const { std::cell::Cell::new(DepthwiseLayout::Auto) };
}

/// Sets the depthwise forward's layout for the convolutions this thread starts, and returns
/// the previous one (for benchmarks and tests; the default, [`DepthwiseLayout::Auto`], picks
/// the faster).
pub fn set_depthwise_layout(layout: DepthwiseLayout) -> DepthwiseLayout {
    LAYOUT.with(|l| l.replace(layout))
}

/// The depthwise forward's layout for the convolutions this thread starts
/// ([`set_depthwise_layout`]).
pub fn depthwise_layout() -> DepthwiseLayout {
    LAYOUT.with(|l| l.get())
}

impl Geometry {
    /// Whether the forward runs [`LANES`] planes at a time, channel-interleaved
    /// ([`DepthwiseLayout`]): under `Auto`, for output planes of at most 28 × 28 that are
    /// strided (the plane layout goes row by row, a row of Lite0's 14 → 7 stage filling 7 of
    /// 64 lanes), or at most 8 × 8 (at stride 1 the plane layout's one run over the plane is
    /// mostly idle lanes there), or whose whole input is at most 2²⁰ values (a batch of 32 at
    /// 14 × 14 × 480 is faster in planes, one of 8 interleaved); and given a full group of
    /// planes (`examples/depthwise_time` measures both).
    fn interleaved(&self) -> bool {
        let out = self.oh * self.ow;
        let fits = self.n * self.c * self.h * self.w <= 1 << 20;
        match depthwise_layout() {
            DepthwiseLayout::Auto => {
                out <= 28 * 28 && (self.stride > 1 || out <= 64 || fits) && self.n * self.c >= LANES
            }
            DepthwiseLayout::Planes => false,
            DepthwiseLayout::Interleaved => true,
        }
    }

    /// Length of the interleaved scratch: the padded plane, [`LANES`] values per pixel.
    fn interleaved_len(&self) -> usize {
        let (ph, pw) = self.padded();
        ph * pw * LANES
    }

    /// The interleaved scratch offset of every filter tap from an output's top-left input.
    fn interleaved_taps(&self) -> Vec<usize> {
        let pw = self.padded().1;
        (0..self.kh)
            .flat_map(|ky| (0..self.kw).map(move |kx| (ky * self.dilation * pw + kx * self.dilation) * LANES))
            .collect()
    }
}

/// [`LANES`] planes at once: `x` holds the group's input planes (`planes` of them, the last
/// group may be short), `w` and `bias` their filters and biases, each tap a vector of
/// [`LANES`] values ([`interleave_weights`]), `taps` the scratch offset of each tap
/// ([`Geometry::interleaved_taps`]). The planes go into `buf` with one pixel's [`LANES`]
/// values together (its zero border is never written: `buf` is zeroed once per thread), each
/// output is `bias + Σ_taps w · x` over one vector per tap, the taps in order with the
/// multiply and the add separate (the plane kernels' values), then the outputs return to
/// their planes in `y` and take the activation.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_group<T: WithDType>(
    g: &Geometry,
    taps: &[usize],
    x: &[T],
    planes: usize,
    w: &[[T; LANES]],
    bias: &[T; LANES],
    act: Activation,
    buf: &mut [T],
    out: &mut [T],
    y: &mut [T],
    k: Kernels,
) {
    let ys = g.oh * g.ow;
    let (buf, out) = (&mut buf[..g.interleaved_len()], &mut out[..ys * LANES]);
    interleave(g, x, planes, buf, k);
    group_taps(g, taps, buf, w, bias, out, k);
    activate_serial(out, act);
    deinterleave(out, planes, y, k);
}

/// The group's input planes (`planes` of `x`'s, each `H × W`) into the interior of the
/// interleaved scratch: pixel `(i, j)` of plane `l` at `((i + top) · PW + j + left) · LANES + l`.
#[inline(always)]
fn interleave<T: WithDType>(g: &Geometry, x: &[T], planes: usize, buf: &mut [T], k: Kernels) {
    let (ph, pw) = g.padded();
    let (top, left) = (g.top as usize, g.left as usize);
    let (rows, cols) = g.inside();
    let xs = g.h * g.w;
    assert!(
        x.len() >= planes * xs && planes <= LANES && buf.len() >= ph * pw * LANES,
        "interleave: a plane or the scratch is short"
    );
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && k == Kernels::Avx512 && planes == LANES {
        // SAFETY: T is f32; the CPU has AVX-512 F; the reads (pixel `(yy, xx)`, yy < rows,
        // xx < cols, of each of the LANES planes) and the writes
        // (interior pixels) are in bounds (checked above).
        unsafe {
            let x = &*(x as *const [T] as *const [f32]);
            let buf = &mut *(buf as *mut [T] as *mut [f32]);
            return avx512::interleave(x, xs, g.w, (rows, cols), ((top * pw + left), pw), buf);
        }
    }
    let _ = k;
    for yy in 0..rows {
        for xx in 0..cols {
            let d = ((yy + top) * pw + left + xx) * LANES;
            for l in 0..planes {
                buf[d + l] = x[l * xs + yy * g.w + xx];
            }
        }
    }
}

/// The interleaved outputs back to their planes: `y[l · n + p] = out[p · LANES + l]` for the
/// `planes` planes of `n = y.len() / planes` values.
#[inline(always)]
fn deinterleave<T: WithDType>(out: &[T], planes: usize, y: &mut [T], k: Kernels) {
    let n = y.len() / planes.max(1);
    assert!(
        out.len() >= n * LANES && planes <= LANES,
        "deinterleave: the outputs are short"
    );
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && k == Kernels::Avx512 {
        // SAFETY: T is f32; the CPU has AVX-512 F; `out` holds `n · LANES` values and `y`
        // `planes · n` (checked above).
        unsafe {
            let out = &*(out as *const [T] as *const [f32]);
            let y = &mut *(y as *mut [T] as *mut [f32]);
            return avx512::deinterleave(out, planes, n, y);
        }
    }
    let _ = k;
    for l in 0..planes {
        for p in 0..n {
            y[l * n + p] = out[p * LANES + l];
        }
    }
}

/// The interleaved outputs of [`forward_group`] from its scratch: `out[p · LANES + l]` for
/// output pixel `p` and lane `l`, with `k`'s build (AVX-512 f32: [`ROW_BLOCK`] outputs of a
/// row in registers across all taps).
#[inline(always)]
fn group_taps<T: WithDType>(
    g: &Geometry,
    taps: &[usize],
    buf: &[T],
    w: &[[T; LANES]],
    bias: &[T; LANES],
    out: &mut [T],
    k: Kernels,
) {
    let (_, pw) = g.padded();
    let (s, ow) = (g.stride, g.ow);
    let last = (g.oh - 1) * s * pw * LANES + (ow - 1) * s * LANES + taps.last().copied().unwrap_or(0);
    assert!(
        last + LANES <= buf.len() && out.len() >= g.oh * ow * LANES && w.len() == taps.len(),
        "a tap reads past the interleaved scratch"
    );
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>() && k == Kernels::Avx512 {
        // SAFETY: T is f32 (same layout); the CPU has AVX-512 F (`k` is at most
        // `Kernels::detected()`); every read and write is in bounds (checked above).
        unsafe {
            let buf = &*(buf as *const [T] as *const [f32]);
            let w = &*(w as *const [[T; LANES]] as *const [[f32; LANES]]);
            let bias = &*(bias as *const [T; LANES] as *const [f32; LANES]);
            let out = &mut *(out as *mut [T] as *mut [f32]);
            return avx512::group_taps(g, taps, buf, w, bias, out);
        }
    }
    let _ = k;
    for oy in 0..g.oh {
        let row = oy * s * pw * LANES;
        for ox in 0..ow {
            let mut a = *bias;
            for (wt, &t) in w.iter().zip(taps) {
                let v = &buf[row + ox * s * LANES + t..][..LANES];
                for l in 0..LANES {
                    a[l] += v[l] * wt[l];
                }
            }
            out[(oy * ow + ox) * LANES..][..LANES].copy_from_slice(&a);
        }
    }
}

/// The filters of planes `first..first + LANES` (channel `plane % c`), one vector per tap, and
/// their biases; lanes past the last plane are zero.
fn interleave_weights<T: WithDType>(
    g: &Geometry,
    w: &[T],
    bias: Option<&[T]>,
    first: usize,
) -> (Vec<[T; LANES]>, [T; LANES]) {
    let ks = g.kh * g.kw;
    let planes = (g.n * g.c - first).min(LANES);
    let mut taps = vec![[T::zero(); LANES]; ks];
    let mut b = [T::zero(); LANES];
    for l in 0..planes {
        let ch = (first + l) % g.c;
        for (t, tap) in taps.iter_mut().enumerate() {
            tap[l] = w[ch * ks + t];
        }
        if let Some(bias) = bias {
            b[l] = bias[ch];
        }
    }
    (taps, b)
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
        pub(super) fn forward_group<T: WithDType>(
            g: &Geometry,
            taps: &[usize],
            x: &[T],
            planes: usize,
            w: &[[T; LANES]],
            bias: &[T; LANES],
            act: Activation,
            buf: &mut [T],
            out: &mut [T],
            y: &mut [T],
        ) {
            super::forward_group(g, taps, x, planes, w, bias, act, buf, out, y, $kernels)
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

    /// The 16 × 16 block `r` transposed in registers (row `i` becomes column `i`): unpacks
    /// of 32- and 64-bit lanes, then two rounds of 128-bit lane shuffles.
    #[inline(always)]
    unsafe fn transpose16(r: &mut [__m512; 16]) {
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..4 {
            let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            let pd = _mm512_castps_pd;
            r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
            r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
            r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
            r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
        }
        for h in 0..2 {
            for i in 0..4 {
                let (a, b) = (r[8 * h + i], r[8 * h + 4 + i]);
                t[8 * h + i] = _mm512_shuffle_f32x4::<0x88>(a, b);
                t[8 * h + 4 + i] = _mm512_shuffle_f32x4::<0xdd>(a, b);
            }
        }
        for i in 0..8 {
            r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[8 + i]);
            r[8 + i] = _mm512_shuffle_f32x4::<0xdd>(t[i], t[8 + i]);
        }
    }

    /// [`super::interleave`] for f32 and a full group: sixteen pixels of the sixteen planes
    /// at a time, loaded as rows and transposed in registers, each pixel's vector stored at
    /// its scratch pixel (`first` the scratch pixel of input pixel `(0, 0)`, `pw` the
    /// scratch's row).
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `x` holds [`LANES`] planes of `xs` values, rows of `w`, with
    /// `(rows, cols)` inside them; `buf` holds the pixels written.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn interleave(
        x: &[f32],
        xs: usize,
        w: usize,
        (rows, cols): (usize, usize),
        (first, pw): (usize, usize),
        buf: &mut [f32],
    ) {
        let (src, dst) = (x.as_ptr(), buf.as_mut_ptr());
        let mut r = [_mm512_setzero_ps(); 16];
        let mut p0 = 0;
        while p0 < xs.min(rows * w) {
            let m = lanes(xs, p0);
            for (l, v) in r.iter_mut().enumerate() {
                *v = _mm512_maskz_loadu_ps(m, src.add(l * xs + p0));
            }
            transpose16(&mut r);
            for (i, v) in r.iter().enumerate().take(xs - p0) {
                let (yy, xx) = ((p0 + i) / w, (p0 + i) % w);
                if yy < rows && xx < cols {
                    _mm512_storeu_ps(dst.add((first + yy * pw + xx) * LANES), *v);
                }
            }
            p0 += 16;
        }
    }

    /// [`super::deinterleave`] for f32: sixteen pixels at a time, their vectors loaded and
    /// transposed in registers into sixteen values of each plane, the tail masked.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `out` holds `n · LANES` values and `y` `planes · n`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn deinterleave(out: &[f32], planes: usize, n: usize, y: &mut [f32]) {
        let (src, dst) = (out.as_ptr(), y.as_mut_ptr());
        let mut r = [_mm512_setzero_ps(); 16];
        let mut p0 = 0;
        while p0 < n {
            for (i, v) in r.iter_mut().enumerate() {
                *v = if p0 + i < n {
                    _mm512_loadu_ps(src.add((p0 + i) * LANES))
                } else {
                    _mm512_setzero_ps()
                };
            }
            transpose16(&mut r);
            let m = lanes(n, p0);
            for (l, v) in r.iter().enumerate().take(planes) {
                _mm512_mask_storeu_ps(dst.add(l * n + p0), m, *v);
            }
            p0 += 16;
        }
    }

    /// [`super::group_taps`] for f32: [`ROW_BLOCK`] outputs of a row at a time, each one
    /// vector of [`LANES`] planes, in registers across all taps (taps in order, the multiply
    /// and the add separate).
    ///
    /// # Safety
    /// The CPU has AVX-512 F; every read `buf[oy·s·pw·L + ox·s·L + taps[t] ..][..L]` and
    /// write `out[(oy·ow + ox)·L..][..L]` is in bounds, and `w` has one vector per tap.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn group_taps(
        g: &Geometry,
        taps: &[usize],
        buf: &[f32],
        w: &[[f32; LANES]],
        bias: &[f32; LANES],
        out: &mut [f32],
    ) {
        let (_, pw) = g.padded();
        let (s, ow) = (g.stride, g.ow);
        let (src, dst) = (buf.as_ptr(), out.as_mut_ptr());
        let vb = _mm512_loadu_ps(bias.as_ptr());
        let step = s * LANES;
        for oy in 0..g.oh {
            let row = src.add(oy * s * pw * LANES);
            let mut ox = 0;
            while ox + ROW_BLOCK <= ow {
                let p = row.add(ox * step);
                let (mut a0, mut a1, mut a2, mut a3) = (vb, vb, vb, vb);
                for (wt, &t) in w.iter().zip(taps) {
                    let vw = _mm512_loadu_ps(wt.as_ptr());
                    let q = p.add(t);
                    a0 = _mm512_add_ps(a0, _mm512_mul_ps(_mm512_loadu_ps(q), vw));
                    a1 = _mm512_add_ps(a1, _mm512_mul_ps(_mm512_loadu_ps(q.add(step)), vw));
                    a2 = _mm512_add_ps(a2, _mm512_mul_ps(_mm512_loadu_ps(q.add(2 * step)), vw));
                    a3 = _mm512_add_ps(a3, _mm512_mul_ps(_mm512_loadu_ps(q.add(3 * step)), vw));
                }
                let o = dst.add((oy * ow + ox) * LANES);
                _mm512_storeu_ps(o, a0);
                _mm512_storeu_ps(o.add(LANES), a1);
                _mm512_storeu_ps(o.add(2 * LANES), a2);
                _mm512_storeu_ps(o.add(3 * LANES), a3);
                ox += ROW_BLOCK;
            }
            for ox in ox..ow {
                let p = row.add(ox * step);
                let mut a = vb;
                for (wt, &t) in w.iter().zip(taps) {
                    a = _mm512_add_ps(
                        a,
                        _mm512_mul_ps(_mm512_loadu_ps(p.add(t)), _mm512_loadu_ps(wt.as_ptr())),
                    );
                }
                _mm512_storeu_ps(dst.add((oy * ow + ox) * LANES), a);
            }
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
                if g.interleaved() {
                    let taps = g.interleaved_taps();
                    let scratch = || (vec![T::zero(); g.interleaved_len()], vec![T::zero(); ys * LANES]);
                    y.par_chunks_mut(ys * LANES)
                        .enumerate()
                        .for_each_init(scratch, |(buf, out), (group, y)| {
                            let first = group * LANES;
                            let planes = y.len() / ys;
                            let x = &a[first * xs..][..planes * xs];
                            let (w, b0) = interleave_weights(&g, b, bias.as_deref(), first);
                            #[cfg(target_arch = "x86_64")]
                            match k {
                                // SAFETY (each arm): the CPU has the build's features.
                                Kernels::Avx512 => unsafe {
                                    return avx512::forward_group(&g, &taps, x, planes, &w, &b0, self.act, buf, out, y);
                                },
                                Kernels::Avx2 => unsafe {
                                    return avx2::forward_group(&g, &taps, x, planes, &w, &b0, self.act, buf, out, y);
                                },
                                Kernels::Portable => {}
                            }
                            forward_group(&g, &taps, x, planes, &w, &b0, self.act, buf, out, y, Kernels::Portable);
                        });
                    return Ok(y);
                }
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
