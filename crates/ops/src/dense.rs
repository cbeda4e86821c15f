//! Dense and grouped convolution on the CPU: the forward pass is im2col + gemm, and the input
//! gradient is a gemm with the transposed weight (row-major, kept per weight tensor by
//! [`crate::weights`], when there is one group) + col2im; 3×3 stride-1 convolutions run
//! Winograd's F(2×2, 3×3) both ways instead ([`crate::winograd`]). The weights are constants of
//! the op, so no weight gradient is computed (candle's backward computes it always, and runs the
//! input gradient as a naive transposed convolution). Bias and activation are fused into the op.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::act::{activate, mask, take_gradient_rule, Activation, GradientRule};
use crate::contiguous_slice;
use crate::simd::Kernels;
use crate::{weights, winograd};

/// The sizes of one convolution.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub groups: usize,
    pub kh: usize,
    pub kw: usize,
    pub oh: usize,
    pub ow: usize,
    pub stride: usize,
    pub dilation: usize,
    pub top: usize,
    pub left: usize,
}

impl Geometry {
    /// Rows of the column matrix of one group: `C_in / groups · kh · kw`.
    fn k_group(&self) -> usize {
        self.c_in / self.groups * self.kh * self.kw
    }

    /// Output positions per image.
    fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// A 1×1, stride-1, unpadded convolution: the column matrix is the input itself.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.oh == self.h && self.ow == self.w
    }

    /// For kernel offset `k` (in input pixels, before padding), the output positions
    /// `lo..hi` along an axis of `len` input pixels and `out` outputs that read inside the input.
    fn inside(&self, offset: usize, pad: usize, len: usize, out: usize) -> (usize, usize) {
        // input index = o·stride + offset − pad must lie in [0, len).
        let s = self.stride;
        let lo = pad.saturating_sub(offset).div_ceil(s);
        let hi = if len + pad > offset {
            (len + pad - offset).div_ceil(s).min(out)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Fills `col` (`C_in·kh·kw` rows of `OH·OW`) from one image `x` (`C_in·H·W`).
    fn im2col<T: WithDType>(&self, x: &[T], col: &mut [T]) {
        self.im2col_into(x, col, self.positions(), 0)
    }

    /// [`Geometry::im2col`] into the columns `offset..offset + OH·OW` of a column matrix whose
    /// rows are `stride` long (several images side by side, for one gemm over all of them).
    fn im2col_into<T: WithDType>(&self, x: &[T], col: &mut [T], stride: usize, offset: usize) {
        let g = *self;
        let p = g.positions();
        col.par_chunks_mut(stride)
            .with_min_len(8)
            .enumerate()
            .for_each(|(r, row)| {
                let row = &mut row[offset..offset + p];
                let (c, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
                let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
                let (oy_lo, oy_hi) = g.inside(ky * g.dilation, g.top, g.h, g.oh);
                let (ox_lo, ox_hi) = g.inside(kx * g.dilation, g.left, g.w, g.ow);
                for oy in 0..g.oh {
                    let out = &mut row[oy * g.ow..(oy + 1) * g.ow];
                    if oy < oy_lo || oy >= oy_hi {
                        out.fill(T::zero());
                        continue;
                    }
                    let iy = oy * g.stride + ky * g.dilation - g.top;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    out[..ox_lo].fill(T::zero());
                    out[ox_hi..].fill(T::zero());
                    let ix0 = ox_lo * g.stride + kx * g.dilation - g.left;
                    if g.stride == 1 {
                        out[ox_lo..ox_hi].copy_from_slice(&src[ix0..ix0 + ox_hi - ox_lo]);
                    } else {
                        for (o, v) in out[ox_lo..ox_hi].iter_mut().enumerate() {
                            *v = src[ix0 + o * g.stride];
                        }
                    }
                }
            });
    }

    /// Adds the column matrix `col` back onto the image gradient `gx` (`C_in·H·W`, zeroed).
    fn col2im<T: WithDType>(&self, col: &[T], gx: &mut [T]) {
        let g = *self;
        let p = g.positions();
        gx.par_chunks_mut(g.h * g.w).enumerate().for_each(|(c, plane)| {
            for ky in 0..g.kh {
                let (oy_lo, oy_hi) = g.inside(ky * g.dilation, g.top, g.h, g.oh);
                for kx in 0..g.kw {
                    let (ox_lo, ox_hi) = g.inside(kx * g.dilation, g.left, g.w, g.ow);
                    let row = &col[((c * g.kh + ky) * g.kw + kx) * p..][..p];
                    let ix0 = (ox_lo * g.stride + kx * g.dilation).wrapping_sub(g.left);
                    for oy in oy_lo..oy_hi {
                        let iy = oy * g.stride + ky * g.dilation - g.top;
                        let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                        let src = &row[oy * g.ow + ox_lo..oy * g.ow + ox_hi];
                        if g.stride == 1 {
                            for (d, s) in dst[ix0..ix0 + src.len()].iter_mut().zip(src) {
                                *d += *s;
                            }
                        } else {
                            for (o, s) in src.iter().enumerate() {
                                dst[ix0 + o * g.stride] += *s;
                            }
                        }
                    }
                }
            }
        });
    }
}

thread_local! {
    /// Reused column buffers (f64 words, enough for either dtype): allocating and faulting in
    /// megabytes on every call costs as much as a small convolution.
    static SCRATCH: RefCell<[Vec<f64>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// Runs `f` with two scratch slices of `a` and `b` elements of `T` (contents unspecified).
pub(crate) fn with_scratch<T: WithDType, R>(a: usize, b: usize, f: impl FnOnce(&mut [T], &mut [T]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        let [sa, sb] = &mut *s;
        let words = |n: usize| (n * std::mem::size_of::<T>()).div_ceil(8);
        for (v, n) in [(&mut *sa, a), (&mut *sb, b)] {
            if v.len() < words(n) {
                *v = vec![0.0; words(n)];
            }
        }
        // SAFETY: the buffers hold at least `a` / `b` values of T (f32 or f64: any bit
        // pattern is a valid value, and f64 alignment covers both), and do not overlap.
        let (ta, tb) = unsafe {
            (
                std::slice::from_raw_parts_mut(sa.as_mut_ptr() as *mut T, a),
                std::slice::from_raw_parts_mut(sb.as_mut_ptr() as *mut T, b),
            )
        };
        f(ta, tb)
    })
}

/// `dst (m×n, row-major) [+]= lhs (m×k, strides lhs_rs/lhs_cs) · rhs (k×n, row-major)`, the
/// depth summed in `blocks` ([`gemm_in_blocks`]; [`depth_blocks`]`(k)` unless the channels
/// were compacted), on all of rayon's threads.
///
/// # Safety
/// The pointers must address matrices of these sizes and strides, the blocks inside the depth,
/// `dst` not overlapping.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm<T: WithDType>(
    m: usize,
    n: usize,
    blocks: impl IntoIterator<Item = (usize, usize)>,
    dst: *mut T,
    accumulate: bool,
    lhs: *const T,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const T,
) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let (dst, rhs) = ((dst, n as isize), (rhs, n as isize));
    gemm_in_blocks(m, n, blocks, dst, accumulate, (lhs, lhs_rs, lhs_cs), rhs, parallelism)
}

/// `dst (m×n, row stride dst.1) [+]= lhs (m×k, strides lhs.1/lhs.2) · rhs (k×n, row stride
/// rhs.1)`, columns contiguous in `dst` and `rhs`, with the depth summed in the given blocks
/// `(first, length)` in order, one `gemm` call each (empty ones skipped: they add nothing):
/// [`depth_blocks`] for a sum whose rounding depends on `k` alone.
///
/// # Safety
/// The pointers must address matrices of these sizes and strides, the blocks inside the depth,
/// `dst` not overlapping.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_in_blocks<T: WithDType>(
    m: usize,
    n: usize,
    blocks: impl IntoIterator<Item = (usize, usize)>,
    (dst, dst_rs): (*mut T, isize),
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (*const T, isize, isize),
    (rhs, rhs_rs): (*const T, isize),
    parallelism: gemm::Parallelism,
) {
    let mut blocks: Vec<(usize, usize)> = blocks.into_iter().filter(|b| b.1 > 0).collect();
    if blocks.is_empty() {
        // No depth: the product is zero (a fill unless accumulating).
        blocks.push((0, 0));
    }
    for (i, (from, depth)) in blocks.into_iter().enumerate() {
        if (1..=2).contains(&depth) {
            shallow_block(
                m,
                n,
                depth,
                (dst, dst_rs),
                accumulate || i > 0,
                (lhs.offset(from as isize * lhs_cs), lhs_rs, lhs_cs),
                (rhs.offset(from as isize * rhs_rs), rhs_rs),
            );
            continue;
        }
        gemm::gemm(
            m,
            n,
            depth,
            dst,
            1,
            dst_rs,
            accumulate || i > 0,
            lhs.offset(from as isize * lhs_cs),
            lhs_cs,
            lhs_rs,
            rhs.offset(from as isize * rhs_rs),
            1,
            rhs_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A block of depth 1 or 2 of [`gemm_in_blocks`], summed as `gemm`'s kernels sum a deeper one:
/// the products fused-multiply-added in order from zero, the sum then added to `dst` (or
/// written). `gemm` itself sends depths of at most 2 to a path that multiply-adds into `dst`
/// directly, so an image whose compacted channels leave one or two in a block would round
/// differently alone than beside images that keep more there (a channel search at
/// EfficientNet-Lite0 `layer3` scored a pair 0.951314867 alone and 0.951315165 in a batch).
///
/// # Safety
/// As [`gemm_in_blocks`], for this one block.
unsafe fn shallow_block<T: WithDType>(
    m: usize,
    n: usize,
    depth: usize,
    (dst, dst_rs): (*mut T, isize),
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (*const T, isize, isize),
    (rhs, rhs_rs): (*const T, isize),
) {
    let fma = |a: T, b: T, c: T| -> T {
        match T::DTYPE {
            DType::F32 => T::from_f64((a.to_f64() as f32).mul_add(b.to_f64() as f32, c.to_f64() as f32) as f64),
            _ => T::from_f64(a.to_f64().mul_add(b.to_f64(), c.to_f64())),
        }
    };
    for r in 0..m as isize {
        let out = dst.offset(r * dst_rs);
        for c in 0..n as isize {
            let mut sum = T::zero();
            for d in 0..depth as isize {
                sum = fma(*lhs.offset(r * lhs_rs + d * lhs_cs), *rhs.offset(d * rhs_rs + c), sum);
            }
            let o = out.offset(c);
            *o = if accumulate { *o + sum } else { sum };
        }
    }
}

/// The most products one gemm call sums per output. `gemm` splits a longer depth into blocks
/// whose size depends on the other two dimensions (`gemm-common` 0.19: `min(k, 512)` when both
/// are at most 64, else balanced blocks of at most 512 here), so the rounding of one image's
/// output would depend on how many images share the gemm.
const GEMM_DEPTH: usize = 512;

/// The depth `k` of a product in balanced blocks of at most [`GEMM_DEPTH`], as `(first,
/// length)`, chosen from `k` alone: each is one `gemm` call that sums its block in order, and
/// the blocks are added in order (what `gemm` does itself for a wide product, so its results
/// there are unchanged). One block when `k` is 0.
pub(crate) fn depth_blocks(k: usize) -> impl Iterator<Item = (usize, usize)> {
    let blocks = k.div_ceil(GEMM_DEPTH).max(1);
    let size = k.div_ceil(blocks);
    (0..blocks).map(move |b| (b * size, size.min(k - b * size)))
}

/// The depth blocks of a convolution's product over the input channels `live` only (each
/// `taps` deep): the blocks the whole product would have ([`depth_blocks`] of `c_in · taps`),
/// each kept to the live channels' part of it. An image's nonzero products are then summed in
/// the same groups whichever channels its batch-mates keep alive.
fn live_blocks(live: &[usize], c_in: usize, taps: usize) -> Vec<(usize, usize)> {
    // Compacted depth before the whole product's index `at`.
    let before = |at: usize| -> usize { live.iter().map(|&c| at.saturating_sub(c * taps).min(taps)).sum() };
    depth_blocks(c_in * taps)
        .map(|(from, len)| {
            let (a, b) = (before(from), before(from + len));
            (a, b - a)
        })
        .collect()
}

/// The contiguous values of a CPU tensor.
fn values<T: WithDType>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> candle_core::Result<Vec<T>>,
) -> candle_core::Result<Vec<T>> {
    crate::with_tensor_slice(t, "conv2d weights", f)?
}

/// The forward op: `(N, C_in, H, W) -> act(conv(x, weight) + bias)`.
pub(crate) struct DenseConv {
    pub g: Geometry,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub act: Activation,
    /// The build of the Winograd path's tile transforms.
    pub kernels: Kernels,
}

/// A gemm over several images at once when each has fewer output positions than this: one
/// image of a 7×7 or 14×14 map makes a gemm too narrow to run near the machine's peak (the
/// images' columns side by side make it up to this wide).
const BATCH_POSITIONS: usize = 2048;

impl DenseConv {
    fn forward<T: WithDType>(&self, x: &[T], w: &[T]) -> candle_core::Result<Vec<T>> {
        let g = self.g;
        let (p, kg, cg) = (g.positions(), g.k_group(), g.c_out / g.groups);
        let bias: Option<Vec<T>> = match &self.bias {
            Some(b) => Some(values::<T>(b, |v| Ok(v.to_vec()))?),
            None => None,
        };
        // Every element is written by the bias fill or by a gemm that does not read it.
        let mut y = crate::output_vec(g.n * g.c_out * p);
        if g.groups == 1 {
            let image = g.c_in * g.h * g.w;
            if !g.winograd() {
                self.forward_batches(x, w, bias.as_deref(), &mut y);
                return Ok(y);
            }
            // Winograd, but not for an image with most input channels zero: im2col leaves them
            // out of its gemm. Decided per image, so that an image's output does not depend on
            // its batch-mates.
            let one = Geometry { n: 1, ..g };
            let sparse: Vec<bool> = x
                .chunks(image)
                .map(|img| sparse_channels(&one, img).is_some())
                .collect();
            // Whole images of one kind: im2col for mostly-zero ones, else Winograd.
            let run = |sparse: bool, n: usize, xs: &[T], ys: &mut [T]| {
                if sparse {
                    self.forward_batches(xs, w, bias.as_deref(), ys);
                } else {
                    let u = winograd::filters(self.weight.id(), w, g.c_out, g.c_in, false);
                    let gk = Geometry { n, ..g };
                    winograd::forward(&gk, xs, &u, bias.as_deref(), self.act, self.kernels, ys);
                }
            };
            let first = sparse.first().copied().unwrap_or(false);
            if sparse.iter().all(|&s| s == first) {
                run(first, g.n, x, &mut y);
            } else {
                // A mixed batch: each kind gathered, run, and scattered back.
                let out = g.c_out * p;
                for kind in [false, true] {
                    let picked: Vec<usize> = (0..g.n).filter(|&i| sparse[i] == kind).collect();
                    let mut xs = Vec::with_capacity(picked.len() * image);
                    for &i in &picked {
                        xs.extend_from_slice(&x[i * image..(i + 1) * image]);
                    }
                    let mut ys = crate::output_vec(picked.len() * out);
                    run(kind, picked.len(), &xs, &mut ys);
                    for (&i, yi) in picked.iter().zip(ys.chunks(out)) {
                        y[i * out..(i + 1) * out].copy_from_slice(yi);
                    }
                }
            }
            return Ok(y);
        }
        let col_len = if g.is_pointwise() { 0 } else { g.c_in * g.kh * g.kw * p };
        with_scratch::<T, _>(col_len, 0, |col, _| {
            for (img, out) in x.chunks(g.c_in * g.h * g.w).zip(y.chunks_mut(g.c_out * p)) {
                let col: &[T] = if g.is_pointwise() {
                    img
                } else {
                    g.im2col(img, col);
                    col
                };
                if let Some(b) = &bias {
                    for (row, &v) in out.chunks_mut(p).zip(b) {
                        row.fill(v);
                    }
                }
                for gi in 0..g.groups {
                    // SAFETY: group `gi`'s weight rows (cg × kg), column rows (kg × p) and
                    // output rows (cg × p) lie inside their buffers.
                    unsafe {
                        gemm(
                            cg,
                            p,
                            depth_blocks(kg),
                            out.as_mut_ptr().add(gi * cg * p),
                            bias.is_some(),
                            w.as_ptr().add(gi * cg * kg),
                            kg as isize,
                            1,
                            col.as_ptr().add(gi * kg * p),
                        )
                    }
                }
                // While this image's output is still in cache.
                activate(out, self.act);
            }
        });
        Ok(y)
    }
}

/// The input channels that are not zero in some image of `xs` (whole images of `g`'s input),
/// when at most a quarter of at least 8 are (a hard channel mask upstream keeps 25 of 1024):
/// the im2col path then leaves the others out of its gemm. The scan stops once more than a
/// quarter are live (after the first image, on a layer that no mask feeds directly).
fn sparse_channels<T: WithDType>(g: &Geometry, xs: &[T]) -> Option<Vec<usize>> {
    let mut alive = vec![false; g.c_in];
    let mut count = 0;
    for img in xs.chunks(g.c_in * g.h * g.w) {
        for (c, plane) in img.chunks(g.h * g.w).enumerate() {
            if !alive[c] && plane.iter().any(|v| *v != T::zero()) {
                alive[c] = true;
                count += 1;
            }
        }
        if count * 4 > g.c_in {
            return None;
        }
    }
    (g.c_in >= 8).then(|| (0..g.c_in).filter(|&c| alive[c]).collect())
}

impl DenseConv {
    /// The im2col path over whole images `xs`: [`DenseConv::forward_batch`] on runs of images
    /// that together make a gemm about [`BATCH_POSITIONS`] wide.
    fn forward_batches<T: WithDType>(&self, xs: &[T], w: &[T], bias: Option<&[T]>, ys: &mut [T]) {
        let g = self.g;
        let (p, image) = (g.positions(), g.c_in * g.h * g.w);
        let per = (BATCH_POSITIONS / p).max(1);
        for (x, y) in xs.chunks(per * image).zip(ys.chunks_mut(per * g.c_out * p)) {
            self.forward_batch(x, w, bias, y);
        }
    }

    /// Several images (`xs`, whole images; one when each fills a gemm alone) through one gemm:
    /// their column matrices side by side, `W · [col₀ col₁ …]`, the output scattered back per
    /// image (one image's is written in place, and a 1×1 convolution's column matrix is the
    /// image itself). Input channels that are zero in every one of them (a hard channel mask
    /// upstream keeps 25 of 1024) are left out of the gemm when they are most of them.
    fn forward_batch<T: WithDType>(&self, xs: &[T], w: &[T], bias: Option<&[T]>, ys: &mut [T]) {
        let g = self.g;
        let image = g.c_in * g.h * g.w;
        let nb = xs.len() / image;
        let p = g.positions();
        let khw = g.kh * g.kw;
        let live = sparse_channels(&g, xs);
        let blocks = match &live {
            Some(live) => live_blocks(live, g.c_in, khw),
            None => depth_blocks(g.c_in * khw).collect(),
        };
        let (gc, xc, wc): (Geometry, std::borrow::Cow<[T]>, std::borrow::Cow<[T]>) = if let Some(live) = live {
            let gc = Geometry {
                c_in: live.len(),
                n: nb,
                ..g
            };
            let plane = g.h * g.w;
            let mut xc = Vec::with_capacity(nb * live.len() * plane);
            for img in xs.chunks(image) {
                for &c in &live {
                    xc.extend_from_slice(&img[c * plane..(c + 1) * plane]);
                }
            }
            let mut wc = Vec::with_capacity(g.c_out * live.len() * khw);
            for row in w.chunks(g.k_group()).take(g.c_out) {
                for &c in &live {
                    wc.extend_from_slice(&row[c * khw..(c + 1) * khw]);
                }
            }
            (gc, xc.into(), wc.into())
        } else {
            (Geometry { n: nb, ..g }, xs.into(), w.into())
        };
        let k = gc.c_in * khw;
        let wide = nb * p;
        // One image: its column matrix is the image itself for a 1×1 convolution, and the
        // gemm writes its output in place.
        let direct = nb == 1;
        let in_place = direct && gc.is_pointwise();
        let col_len = if in_place { 0 } else { k * wide };
        let out_len = if direct { 0 } else { g.c_out * wide };
        with_scratch::<T, _>(col_len, out_len, |col_scratch, out_scratch| {
            if k > 0 && !in_place {
                let cimage = gc.c_in * gc.h * gc.w;
                for (i, img) in xc.chunks(cimage).take(nb).enumerate() {
                    if gc.is_pointwise() {
                        for (c, plane) in img.chunks(p).enumerate() {
                            col_scratch[c * wide + i * p..c * wide + (i + 1) * p].copy_from_slice(plane);
                        }
                    } else {
                        gc.im2col_into(img, col_scratch, wide, i * p);
                    }
                }
            }
            let col: &[T] = if in_place { &xc } else { col_scratch };
            let out: &mut [T] = if direct { &mut *ys } else { out_scratch };
            match bias {
                Some(b) => {
                    for (row, &v) in out.chunks_mut(wide).zip(b) {
                        row.fill(v);
                    }
                }
                None if k == 0 => out.fill(T::zero()),
                None => {}
            }
            if k > 0 {
                // SAFETY: the weight (c_out × k), the column matrix (k × wide) and the output
                // (c_out × wide) are buffers of exactly those sizes.
                unsafe {
                    gemm(
                        g.c_out,
                        wide,
                        blocks,
                        out.as_mut_ptr(),
                        bias.is_some(),
                        wc.as_ptr(),
                        k as isize,
                        1,
                        col.as_ptr(),
                    )
                }
            }
            if !direct {
                for (i, y) in ys.chunks_mut(g.c_out * p).enumerate() {
                    for (co, dst) in y.chunks_mut(p).enumerate() {
                        dst.copy_from_slice(&out_scratch[co * wide + i * p..co * wide + (i + 1) * p]);
                    }
                }
            }
            activate(ys, self.act);
        });
    }
}

impl CustomOp1 for DenseConv {
    fn name(&self) -> &'static str {
        "extremal-conv2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.g;
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(values::<f32>(&self.weight, |w| {
                self.forward(contiguous_slice(s, l, "conv2d")?, w)
            })?),
            CpuStorage::F64(_) => CpuStorage::F64(values::<f64>(&self.weight, |w| {
                self.forward(contiguous_slice(s, l, "conv2d")?, w)
            })?),
            _ => candle_core::bail!("conv2d: only f32 and f64 are supported on the CPU"),
        };
        Ok((out, Shape::from((g.n, g.c_out, g.oh, g.ow))))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = DenseConvInputGrad {
            g: self.g,
            kernels: self.kernels,
            weight: self.weight.clone(),
            output: (self.act != Activation::None).then(|| res.clone()),
            act: self.act,
            rule: if self.act == Activation::None {
                GradientRule::Standard
            } else {
                take_gradient_rule()
            },
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// The input gradient: `(N, C_out, OH, OW) -> (N, C_in, H, W)`, gemm with the transposed
/// weight then col2im; the activation's gradient is taken from the forward's output.
struct DenseConvInputGrad {
    g: Geometry,
    kernels: Kernels,
    weight: Tensor,
    output: Option<Tensor>,
    act: Activation,
    rule: GradientRule,
}

impl DenseConvInputGrad {
    /// The gradient, given the weights and (with an activation) the forward's output.
    fn backward<T: WithDType>(&self, grad_y: &[T], w: &[T]) -> candle_core::Result<Vec<T>> {
        match &self.output {
            Some(y) => values::<T>(y, |y| self.backward_with(grad_y, w, Some(y))),
            None => self.backward_with(grad_y, w, None),
        }
    }

    fn backward_with<T: WithDType>(&self, grad_y: &[T], w: &[T], output: Option<&[T]>) -> candle_core::Result<Vec<T>> {
        let g = self.g;
        if g.winograd() {
            // The forward of the transposed convolution over the output gradient (masked by
            // the activation's derivative first).
            let gy: std::borrow::Cow<[T]> = match output {
                Some(y) => {
                    let mut masked = crate::output_vec(grad_y.len());
                    mask(grad_y, y, self.act, self.rule, &mut masked);
                    masked.into()
                }
                None => grad_y.into(),
            };
            let u = winograd::filters(self.weight.id(), w, g.c_out, g.c_in, true);
            let mut gx = crate::output_vec(g.n * g.c_in * g.h * g.w);
            winograd::forward(&g.transposed(), &gy, &u, None, Activation::None, self.kernels, &mut gx);
            return Ok(gx);
        }
        let (p, kg, cg) = (g.positions(), g.k_group(), g.c_out / g.groups);
        let pointwise = g.is_pointwise();
        // A pointwise gradient is written whole by the gemm; col2im accumulates into zeros.
        let mut gx = if pointwise {
            crate::output_vec(g.n * g.c_in * g.h * g.w)
        } else {
            vec![T::zero(); g.n * g.c_in * g.h * g.w]
        };
        let col_len = if pointwise { 0 } else { g.c_in * g.kh * g.kw * p };
        let mask_len = if output.is_some() { g.c_out * p } else { 0 };
        // Wᵀ row-major (kept per weight tensor, from its second backward on) where there is one
        // group; else W through strides. The same values either way.
        let transposed = (g.groups == 1)
            .then(|| weights::transposed(self.weight.id(), w, g.c_out, kg))
            .flatten();
        let (lhs, lhs_rs, lhs_cs) = match &transposed {
            Some(t) => (t.as_slice(), g.c_out as isize, 1),
            None => (w, 1, kg as isize),
        };
        with_scratch::<T, _>(col_len, mask_len, |col, masked| {
            for (i, (gy, gxi)) in grad_y
                .chunks(g.c_out * p)
                .zip(gx.chunks_mut(g.c_in * g.h * g.w))
                .enumerate()
            {
                // The activation's derivative, one image at a time.
                let gy: &[T] = match output {
                    Some(y) => {
                        mask(gy, &y[i * g.c_out * p..][..g.c_out * p], self.act, self.rule, masked);
                        masked
                    }
                    None => gy,
                };
                let dst: *mut T = if pointwise { gxi.as_mut_ptr() } else { col.as_mut_ptr() };
                for gi in 0..g.groups {
                    // SAFETY: group `gi`'s transposed weight (kg × cg: the row-major Wᵀ of one
                    // group, or W's group rows read through strides), gradient rows (cg × p) and
                    // column rows (kg × p) lie inside their buffers.
                    unsafe {
                        gemm(
                            kg,
                            p,
                            depth_blocks(cg),
                            dst.add(gi * kg * p),
                            false,
                            lhs.as_ptr().add(gi * cg * kg),
                            lhs_rs,
                            lhs_cs,
                            gy.as_ptr().add(gi * cg * p),
                        )
                    }
                }
                if !pointwise {
                    g.col2im(col, gxi);
                }
            }
        });
        Ok(gx)
    }
}

impl CustomOp1 for DenseConvInputGrad {
    fn name(&self) -> &'static str {
        "extremal-conv2d-input-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.g;
        let out = match s {
            CpuStorage::F32(_) => CpuStorage::F32(values::<f32>(&self.weight, |w| {
                self.backward(contiguous_slice(s, l, "conv2d backward")?, w)
            })?),
            CpuStorage::F64(_) => CpuStorage::F64(values::<f64>(&self.weight, |w| {
                self.backward(contiguous_slice(s, l, "conv2d backward")?, w)
            })?),
            _ => candle_core::bail!("conv2d: only f32 and f64 are supported on the CPU"),
        };
        Ok((out, Shape::from((g.n, g.c_in, g.h, g.w))))
    }
}
