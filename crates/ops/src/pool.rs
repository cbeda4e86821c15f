use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::{shape_err, Result};

/// Configuration of a 2-D max-pool, with PyTorch's `nn.MaxPool2d` semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2d {
    /// Window height and width.
    pub kernel: (usize, usize),
    /// Vertical and horizontal stride.
    pub stride: (usize, usize),
    /// Implicit padding (with −∞) on each side, vertical and horizontal.
    pub padding: (usize, usize),
    /// Round the output size up instead of down (windows that start in the padding are dropped).
    pub ceil_mode: bool,
}

impl Pool2d {
    /// A square `kernel` with `stride`, no padding, floor mode.
    pub fn new(kernel: usize, stride: usize) -> Self {
        Self {
            kernel: (kernel, kernel),
            stride: (stride, stride),
            padding: (0, 0),
            ceil_mode: false,
        }
    }

    /// The same pool with `padding` on every side.
    pub fn with_padding(mut self, padding: usize) -> Self {
        self.padding = (padding, padding);
        self
    }

    /// The same pool in ceil mode.
    pub fn with_ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }

    fn out_dim(&self, inp: usize, k: usize, s: usize, p: usize) -> Option<usize> {
        let span = (inp + 2 * p).checked_sub(k)?;
        let mut out = if self.ceil_mode { span.div_ceil(s) } else { span / s } + 1;
        if self.ceil_mode && (out - 1) * s >= inp + p {
            out -= 1;
        }
        Some(out)
    }

    /// Output height and width for an `h × w` input, or `None` if the window does not fit.
    pub fn output_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        Some((
            self.out_dim(h, self.kernel.0, self.stride.0, self.padding.0)?,
            self.out_dim(w, self.kernel.1, self.stride.1, self.padding.1)?,
        ))
    }
}

/// 2-D max-pool with an argmax backward: the gradient of each output goes, whole, to the first
/// maximal input of its window (PyTorch's rule). Works for any kernel, stride, padding and ceil
/// mode; on devices other than the CPU it is built from candle's differentiable primitives.
///
/// # Shapes
/// - `x`: `(N, C, H, W)`.
/// - returns: `(N, C, H', W')` with `H' = ⌊(H + 2p − k)/s⌋ + 1` (⌈⌉ in ceil mode).
pub fn max_pool2d(x: &Tensor, cfg: &Pool2d) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if cfg.kernel.0 == 0 || cfg.kernel.1 == 0 || cfg.stride.0 == 0 || cfg.stride.1 == 0 {
        return shape_err("max_pool2d", "kernel and stride must be positive");
    }
    if cfg.padding.0 * 2 > cfg.kernel.0 || cfg.padding.1 * 2 > cfg.kernel.1 {
        return shape_err("max_pool2d", "padding must be at most half the kernel");
    }
    if cfg.output_size(h, w).is_none() {
        return shape_err(
            "max_pool2d",
            format!("a {:?} window does not fit a {h}x{w} input", cfg.kernel),
        );
    }
    if x.device().is_cpu() {
        Ok(x.contiguous()?.apply_op1(MaxPool(*cfg))?)
    } else {
        max_pool2d_primitive(x, cfg)
    }
}

/// Device-independent max-pool built from candle's differentiable primitives: pad with −∞,
/// then the elementwise maximum over the `k²` strided window views. [`max_pool2d`] uses it off
/// the CPU; it is slower than the CPU kernel and splits the gradient between exact ties.
///
/// # Shapes
/// - `x`: `(N, C, H, W)`; returns `(N, C, H', W')` as [`max_pool2d`].
pub fn max_pool2d_primitive(x: &Tensor, cfg: &Pool2d) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let Some((oh, ow)) = cfg.output_size(h, w) else {
        return shape_err(
            "max_pool2d",
            format!("a {:?} window does not fit a {h}x{w} input", cfg.kernel),
        );
    };
    let (kh, kw) = cfg.kernel;
    let (sh, sw) = cfg.stride;
    let (ph, pw) = cfg.padding;
    let need_h = (oh - 1) * sh + kh;
    let need_w = (ow - 1) * sw + kw;
    let neg = |rows: usize, cols: usize| -> Result<Tensor> {
        Ok(Tensor::full(f32::NEG_INFINITY, (n, c, rows, cols), x.device())?.to_dtype(x.dtype())?)
    };
    let mut xp = x.clone();
    let bottom = need_h.saturating_sub(h + ph);
    if ph + bottom > 0 {
        xp = Tensor::cat(&[&neg(ph, w)?, &xp, &neg(bottom, w)?], 2)?;
    }
    let right = need_w.saturating_sub(w + pw);
    if pw + right > 0 {
        let rows = xp.dim(2)?;
        xp = Tensor::cat(&[&neg(rows, pw)?, &xp, &neg(rows, right)?], 3)?;
    }
    let mut out: Option<Tensor> = None;
    for i in 0..kh {
        let rows: Vec<u32> = (0..oh).map(|o| (o * sh + i) as u32).collect();
        let rows = Tensor::new(rows.as_slice(), x.device())?;
        let xr = xp.index_select(&rows, 2)?;
        for j in 0..kw {
            let cols: Vec<u32> = (0..ow).map(|o| (o * sw + j) as u32).collect();
            let cols = Tensor::new(cols.as_slice(), x.device())?;
            let v = xr.index_select(&cols, 3)?;
            out = Some(match out {
                None => v,
                Some(m) => m.maximum(&v)?,
            });
        }
    }
    Ok(out.expect("kernel is not empty"))
}

struct MaxPool(Pool2d);

/// The input rows (or columns) `start..end` of output position `o` along one axis of length
/// `len`, the window clipped to the input (padding is −∞, so it never wins).
fn window(o: usize, stride: usize, pad: usize, kernel: usize, len: usize) -> (usize, usize) {
    let first = (o * stride) as isize - pad as isize;
    let start = first.max(0) as usize;
    let end = ((first + kernel as isize).min(len as isize)).max(0) as usize;
    (start, end.max(start))
}

/// Whether `v` is NaN (the one value unequal to itself), for any float type.
#[inline(always)]
fn is_nan<T: WithDType>(v: T) -> bool {
    #[allow(clippy::eq_op)]
    let nan = v != v;
    nan
}

/// PyTorch's max rule: `v` replaces the running maximum when it is larger or NaN (so a NaN
/// propagates, and the first of equal maxima wins).
#[inline(always)]
fn wins<T: WithDType>(v: T, best: T) -> bool {
    v > best || is_nan(v)
}

/// The input span of every output row and every output column of a pool on an `h × w`
/// plane (see [`window`]), computed once per call for all planes.
struct Windows {
    rows: Vec<(usize, usize)>,
    cols: Vec<(usize, usize)>,
}

impl Windows {
    fn new(cfg: &Pool2d, (h, w): (usize, usize)) -> Self {
        let (oh, ow) = cfg.output_size(h, w).expect("checked by max_pool2d");
        Self {
            rows: (0..oh)
                .map(|o| window(o, cfg.stride.0, cfg.padding.0, cfg.kernel.0, h))
                .collect(),
            cols: (0..ow)
                .map(|o| window(o, cfg.stride.1, cfg.padding.1, cfg.kernel.1, w))
                .collect(),
        }
    }
}

/// Max-pools one `h × w` plane into `out` (`oh × ow`): the window maxima down the columns
/// first (whole rows at a time, which vectorises), then along each of those rows (the same
/// values as scanning each window: the maximum is associative, and a NaN anywhere in the
/// window wins either way). `x` is the plane, `w` its width; `rows` is scratch of `w` values.
fn max_plane<T: WithDType>(x: &[T], w: usize, win: &Windows, out: &mut [T], rows: &mut [T]) {
    for (dst, &(ys, ye)) in out.chunks_exact_mut(win.cols.len()).zip(&win.rows) {
        rows.fill(T::from_f64(f64::NEG_INFINITY));
        for y in ys..ye {
            for (r, &v) in rows.iter_mut().zip(&x[y * w..(y + 1) * w]) {
                *r = if wins(v, *r) { v } else { *r };
            }
        }
        for (d, &(xs, xe)) in dst.iter_mut().zip(&win.cols) {
            let mut best = T::from_f64(f64::NEG_INFINITY);
            for &v in &rows[xs..xe] {
                if wins(v, best) {
                    best = v;
                }
            }
            *d = best;
        }
    }
}

/// The max-pool's input gradient on one plane: each output's gradient `g` goes to the first
/// input of its window, in row-major order, that equals the window's maximum `y` (PyTorch's
/// argmax: the first maximum wins), added into `out` (`h × w`). A window whose maximum is NaN
/// is scanned by PyTorch's rule instead ([`for_each_argmax`]'s).
fn max_plane_backward<T: WithDType>(x: &[T], y: &[T], g: &[T], w: usize, win: &Windows, out: &mut [T]) {
    let ow = win.cols.len();
    let mut nan = false;
    for (oy, &(ys, ye)) in win.rows.iter().enumerate() {
        let (m, g) = (&y[oy * ow..(oy + 1) * ow], &g[oy * ow..(oy + 1) * ow]);
        for ((&(xs, xe), &m), &g) in win.cols.iter().zip(m).zip(g) {
            if is_nan(m) {
                nan = true;
                continue;
            }
            // The window scanned backwards, every match taken (a select, not a branch), so
            // the first in row-major order stays.
            let mut first = usize::MAX;
            for yy in (ys..ye).rev() {
                let base = yy * w + xs;
                for (i, &v) in x[base..yy * w + xe].iter().enumerate().rev() {
                    first = if v == m { base + i } else { first };
                }
            }
            if first != usize::MAX {
                out[first] += g;
            }
        }
    }
    if nan {
        for_each_argmax(x, w, win, |o, i, v| {
            if is_nan(v) && i != usize::MAX {
                out[i] += g[o]
            }
        });
    }
}

/// Calls `f(out_index, in_index_of_argmax, value)` for every output position of one plane of
/// width `w` (indices within the plane; `usize::MAX` for a window with no input).
fn for_each_argmax<T: WithDType>(x: &[T], w: usize, win: &Windows, mut f: impl FnMut(usize, usize, T)) {
    let ow = win.cols.len();
    for (oy, &(ys, ye)) in win.rows.iter().enumerate() {
        for (ox, &(xs, xe)) in win.cols.iter().enumerate() {
            let mut best_i = usize::MAX;
            let mut best = T::from_f64(f64::NEG_INFINITY);
            for y in ys..ye {
                let row = y * w;
                for (i, &v) in x[row + xs..row + xe].iter().enumerate() {
                    // PyTorch: `val > max || isnan(val)`, so the first maximum wins.
                    if best_i == usize::MAX || wins(v, best) {
                        best = v;
                        best_i = row + xs + i;
                    }
                }
            }
            f(oy * ow + ox, best_i, best);
        }
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "extremal-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims4()?;
        let (oh, ow) = self.0.output_size(dims.2, dims.3).expect("checked");
        let shape = Shape::from((dims.0, dims.1, oh, ow));
        fn run<T: WithDType>(x: &[T], dims: (usize, usize, usize, usize), cfg: &Pool2d, n: usize) -> Vec<T> {
            let (_, _, h, w) = dims;
            let mut out = vec![T::zero(); n];
            let win = Windows::new(cfg, (h, w));
            let plane = win.rows.len() * win.cols.len();
            if plane == 0 || h * w == 0 {
                return out;
            }
            out.par_chunks_mut(plane)
                .zip(x.par_chunks(h * w))
                .for_each_init(|| vec![T::zero(); w], |rows, (o, x)| max_plane(x, w, &win, o, rows));
            out
        }
        let storage = match s {
            CpuStorage::F32(_) => CpuStorage::F32(run(
                crate::contiguous_slice::<f32>(s, l, "max_pool2d")?,
                dims,
                &self.0,
                shape.elem_count(),
            )),
            CpuStorage::F64(_) => CpuStorage::F64(run(
                crate::contiguous_slice::<f64>(s, l, "max_pool2d")?,
                dims,
                &self.0,
                shape.elem_count(),
            )),
            _ => candle_core::bail!("max_pool2d: only f32 and f64 are supported"),
        };
        Ok((storage, shape))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = arg.apply_op3_no_bwd(res, &grad_res.contiguous()?, &MaxPoolBackward(self.0))?;
        Ok(Some(g))
    }
}

/// The input gradient of [`MaxPool`] from its input, its output and the output's gradient.
struct MaxPoolBackward(Pool2d);

impl CustomOp3 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "extremal-max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims4()?;
        fn run<T: WithDType>(x: &[T], y: &[T], g: &[T], dims: (usize, usize, usize, usize), cfg: &Pool2d) -> Vec<T> {
            let (_, _, h, w) = dims;
            let mut out = vec![T::zero(); x.len()];
            let win = Windows::new(cfg, (h, w));
            let plane = win.rows.len() * win.cols.len();
            if h * w == 0 || plane == 0 {
                return out;
            }
            for (out, ((x, y), g)) in out.chunks_exact_mut(h * w).zip(
                x.chunks_exact(h * w)
                    .zip(y.chunks_exact(plane))
                    .zip(g.chunks_exact(plane)),
            ) {
                max_plane_backward(x, y, g, w, &win, out);
            }
            out
        }
        let name = "max_pool2d backward";
        let storage = match (s1, s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(run(
                crate::contiguous_slice::<f32>(s1, l1, name)?,
                crate::contiguous_slice::<f32>(s2, l2, name)?,
                crate::contiguous_slice::<f32>(s3, l3, name)?,
                dims,
                &self.0,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(run(
                crate::contiguous_slice::<f64>(s1, l1, name)?,
                crate::contiguous_slice::<f64>(s2, l2, name)?,
                crate::contiguous_slice::<f64>(s3, l3, name)?,
                dims,
                &self.0,
            )),
            _ => candle_core::bail!("max_pool2d backward: only f32 and f64 are supported"),
        };
        Ok((storage, l1.shape().clone()))
    }
}

/// Adaptive average pooling with PyTorch's bins (`⌊i·in/out⌋ … ⌈(i+1)·in/out⌉`), as two
/// matmuls: correct for any sizes, differentiable.
///
/// # Shapes
/// - `x`: `(N, C, H, W)`.
/// - returns: `(N, C, out_h, out_w)`.
pub fn adaptive_avg_pool2d(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let y = adaptive_avg_pool2d_plain(x, out_h, out_w)?;
    if crate::excitation_backprop() {
        return crate::excite(x, &y, |q| adaptive_avg_pool2d_plain(q, out_h, out_w));
    }
    Ok(y)
}

fn adaptive_avg_pool2d_plain(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if out_h == 0 || out_w == 0 {
        return shape_err("adaptive_avg_pool2d", "output size must be positive");
    }
    if (out_h, out_w) == (1, 1) {
        return Ok(x.mean_keepdim(3)?.mean_keepdim(2)?);
    }
    let bins = |inp: usize, out: usize| -> Result<Tensor> {
        let mut m = vec![0f64; out * inp];
        for i in 0..out {
            let start = i * inp / out;
            let end = ((i + 1) * inp).div_ceil(out);
            for j in start..end {
                m[i * inp + j] = 1.0 / (end - start) as f64;
            }
        }
        Ok(Tensor::from_vec(m, (out, inp), x.device())?.to_dtype(x.dtype())?)
    };
    let x = if w == out_w {
        x.clone()
    } else {
        x.broadcast_matmul(&bins(w, out_w)?.t()?)?
    };
    let x = if h == out_h {
        x
    } else {
        bins(h, out_h)?.broadcast_matmul(&x)?
    };
    Ok(x)
}
