//! Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", CVPR 2016) for dense 3×3 stride-1 convolutions, forward and input
//! gradient: each 2×2 block of outputs from a 4×4 input tile with 16 multiplies per input and
//! output channel where the direct form takes 36. The input tiles are transformed (`Bᵀ d B`),
//! multiplied by the transformed filters (`G g Gᵀ`) in 16 gemms, one per position of the
//! 4 × 4 tile, and transformed back (`Aᵀ m A`). The filters' transforms are computed once per
//! weight tensor (in f64) and kept ([`crate::weights`]).
//!
//! The values differ from the im2col + gemm path's in the last bits (the sums are reassociated),
//! as PyTorch's CPU convolutions differ from each other; the input gradient of a 3×3 stride-1
//! convolution is itself one (the flipped, transposed filters over the output gradient).

use std::cell::Cell;
use std::sync::Arc;

use candle_core::{TensorId, WithDType};
use rayon::prelude::*;

use crate::act::{activate_serial, Activation};
use crate::dense::{depth_blocks, gemm_in_blocks, with_scratch, Geometry};
use crate::simd::Kernels;
use crate::weights::{self, Layout};

/// Values per tile: a 4 × 4 input patch (and its 4 × 4 product before the output transform).
const TILE: usize = 16;

/// How a dense convolution is computed on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvAlgorithm {
    /// [`ConvAlgorithm::Winograd`] where it applies, with 16 or more channels in and out and
    /// a 7 × 7 or larger output, else [`ConvAlgorithm::Im2col`]; an image with most input
    /// channels zero goes to im2col, which leaves them out of its gemm. Decided per image, from
    /// the geometry and the image alone, so that an image's result does not depend on its
    /// batch.
    #[default]
    Auto,
    /// The column matrix of every kernel offset, one gemm with the weights.
    Im2col,
    /// Winograd's F(2×2, 3×3), for 3×3 stride-1 undilated dense convolutions with at most
    /// two rows or columns of padding before the input (others use im2col).
    Winograd,
}

thread_local! {
    static ALGORITHM: Cell<ConvAlgorithm> = const { Cell::new(ConvAlgorithm::Auto) };
}

/// Sets the algorithm of the dense convolutions this thread starts (forward and input
/// gradient), and returns the previous one (for benchmarks and tests; the default,
/// [`ConvAlgorithm::Auto`], picks the faster).
pub fn set_conv_algorithm(algorithm: ConvAlgorithm) -> ConvAlgorithm {
    ALGORITHM.with(|a| a.replace(algorithm))
}

/// The algorithm of the dense convolutions this thread starts ([`set_conv_algorithm`]).
pub fn conv_algorithm() -> ConvAlgorithm {
    ALGORITHM.with(|a| a.get())
}

/// Tiles per image from which `Auto` takes Winograd: a 7 × 7 output has 16. (One 7 × 7 image
/// alone ran 0.88–1.03× im2col's time forward and 0.93–1.12× with the input gradient in seven
/// `examples/conv_time` runs, and batches of them 0.57–0.65×.)
pub(crate) const MIN_TILES: usize = 16;

impl Geometry {
    /// Whether this convolution runs as F(2×2, 3×3): a 3×3, stride-1, undilated, ungrouped
    /// one with at most 2 rows and columns of padding before the input, and under `Auto` at
    /// least 16 channels in and out and [`MIN_TILES`] tiles per image. Nothing here depends on
    /// the batch's size, so an image's result does not either (a channel search scores one
    /// set alone and in batches, and a sweep's masks must be those of each keep alone).
    pub(crate) fn winograd(&self) -> bool {
        let applies = self.groups == 1
            && self.kh == 3
            && self.kw == 3
            && self.stride == 1
            && self.dilation == 1
            && self.top <= 2
            && self.left <= 2
            && self.c_in > 0
            && self.c_out > 0;
        applies
            && match conv_algorithm() {
                ConvAlgorithm::Auto => {
                    let (th, tw) = self.tiles();
                    self.c_in >= 16 && self.c_out >= 16 && th * tw >= MIN_TILES
                }
                ConvAlgorithm::Im2col => false,
                ConvAlgorithm::Winograd => true,
            }
    }

    /// The convolution whose forward is this one's input gradient: the output gradient in,
    /// the flipped filters transposed, the padding before the input `2 − top` and `2 − left`.
    pub(crate) fn transposed(&self) -> Geometry {
        Geometry {
            c_in: self.c_out,
            c_out: self.c_in,
            h: self.oh,
            w: self.ow,
            oh: self.h,
            ow: self.w,
            top: 2 - self.top,
            left: 2 - self.left,
            ..*self
        }
    }

    /// Tiles (2 × 2 outputs each) per image: rows and columns.
    fn tiles(&self) -> (usize, usize) {
        (self.oh.div_ceil(2), self.ow.div_ceil(2))
    }

    /// Images per pass, so that the transformed input and output (16 values per tile and
    /// channel each) stay within 2²² values apiece.
    fn images_per_pass(&self) -> usize {
        let (th, tw) = self.tiles();
        ((1usize << 22) / (TILE * self.c_in.max(self.c_out) * th * tw).max(1)).max(1)
    }
}

/// The transformed filters `U` of `w` (`c_out × c_in × 3 × 3`, the tensor `id`): 16 matrices
/// (one per tile position), each `c_out × c_in`, interleaved by rows (`c_out × 16 × c_in`), or
/// with `transposed` those of the input gradient's convolution (each filter flipped,
/// `c_in × 16 × c_out`). Computed once per weight tensor ([`weights::derived`]).
pub(crate) fn filters<T: WithDType>(id: TensorId, w: &[T], c_out: usize, c_in: usize, transposed: bool) -> Arc<Vec<T>> {
    let layout = if transposed {
        Layout::WinogradTransposed
    } else {
        Layout::Winograd
    };
    weights::derived(id, layout, || transform_filters(w, c_out, c_in, transposed))
}

/// `G g Gᵀ` of every filter, in f64, `G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]`, laid out per output
/// channel of the convolution (a row of the gemms' left-hand side), then per tile position,
/// then per input channel: each row's 16 segments are written whole, rows in parallel.
fn transform_filters<T: WithDType>(w: &[T], c_out: usize, c_in: usize, transposed: bool) -> Vec<T> {
    let (rows, cols) = if transposed { (c_in, c_out) } else { (c_out, c_in) };
    let mut u = vec![T::zero(); TILE * rows * cols];
    u.par_chunks_mut(TILE * cols).enumerate().for_each(|(row, out)| {
        for col in 0..cols {
            let (k, c) = if transposed { (col, row) } else { (row, col) };
            let g = &w[(k * c_in + c) * 9..][..9];
            let f = |i: usize, j: usize| {
                if transposed {
                    g[(2 - i) * 3 + 2 - j].to_f64()
                } else {
                    g[i * 3 + j].to_f64()
                }
            };
            // G f: 4 × 3.
            let column = |j: usize| {
                [
                    f(0, j),
                    0.5 * (f(0, j) + f(1, j) + f(2, j)),
                    0.5 * (f(0, j) - f(1, j) + f(2, j)),
                    f(2, j),
                ]
            };
            let (c0, c1, c2) = (column(0), column(1), column(2));
            let a: [[f64; 3]; 4] = std::array::from_fn(|i| [c0[i], c1[i], c2[i]]);
            for (i, r) in a.iter().enumerate() {
                let v = [r[0], 0.5 * (r[0] + r[1] + r[2]), 0.5 * (r[0] - r[1] + r[2]), r[2]];
                for (j, &v) in v.iter().enumerate() {
                    out[(i * 4 + j) * cols + col] = T::from_f64(v);
                }
            }
        }
    });
    u
}

/// `y = act(conv(x, w) + bias)` for the `g.n` images of `x` (`N × C_in × H × W`) into `y`
/// (`N × C_out × OH × OW`), `u` the transformed filters of [`filters`] (`C_out × 16 × C_in`).
pub(crate) fn forward<T: WithDType>(
    g: &Geometry,
    x: &[T],
    u: &[T],
    bias: Option<&[T]>,
    act: Activation,
    kernels: Kernels,
    y: &mut [T],
) {
    let (th, tw) = g.tiles();
    let per_image = th * tw;
    let image = g.c_in * g.h * g.w;
    let plane = g.oh * g.ow;
    let per = g.images_per_pass();
    for (xs, ys) in x.chunks(per * image).zip(y.chunks_mut(per * g.c_out * plane)) {
        let nb = xs.len() / image;
        let t = nb * per_image;
        with_scratch::<T, _>(TILE * g.c_in * t, TILE * g.c_out * t, |v, m| {
            // V: per input channel, 16 rows (tile positions) of `t` tiles.
            // (Each rayon task's row scratch is allocated once, not once per channel.)
            v.par_chunks_mut(TILE * t).enumerate().for_each_init(
                || vec![T::zero(); 8 * (tw + 1)],
                |rows, (c, vc)| {
                    for i in 0..nb {
                        let p = &xs[(i * g.c_in + c) * g.h * g.w..][..g.h * g.w];
                        transforms::input(kernels, g, p, vc, t, i * per_image, rows);
                    }
                },
            );
            // M = U V, one gemm per tile position: M is, per output channel, 16 rows of `t`.
            let (m_at, v_at, u_at) = (m.as_mut_ptr() as usize, v.as_ptr() as usize, u.as_ptr() as usize);
            (0..TILE).into_par_iter().for_each(|xi| {
                // SAFETY: position `xi`'s matrices lie inside their buffers: U's (`c_out` rows
                // of `c_in` at a pitch of 16·c_in), V's (`c_in` rows of `t` at a pitch of 16·t)
                // and M's (`c_out` rows of `t`, the same pitch); the gemms write disjoint rows
                // of M. The depth is summed in blocks chosen from `c_in` alone, so that an
                // image's result does not depend on how many share the gemm.
                unsafe {
                    gemm_in_blocks(
                        g.c_out,
                        t,
                        depth_blocks(g.c_in),
                        ((m_at as *mut T).add(xi * t), (TILE * t) as isize),
                        false,
                        ((u_at as *const T).add(xi * g.c_in), (TILE * g.c_in) as isize, 1),
                        ((v_at as *const T).add(xi * t), (TILE * t) as isize),
                        gemm::Parallelism::None,
                    )
                }
            });
            let m: &[T] = m;
            ys.par_chunks_mut(plane).enumerate().for_each_init(
                || vec![T::zero(); 12 * tw],
                |rows, (ik, out)| {
                    let (i, k) = (ik / g.c_out, ik % g.c_out);
                    let b = bias.map_or(T::zero(), |b| b[k]);
                    let mk = &m[k * TILE * t..][..TILE * t];
                    transforms::output(kernels, g, mk, t, i * per_image, b, out, rows);
                    activate_serial(out, act);
                },
            );
        });
    }
}

/// `Bᵀ d B` of every tile of one input plane `p` (`H × W`) into `vc` (16 rows of `t` tiles, this
/// image's from tile `first`), `B = [1 0 0 0; 0 1 −1 1; −1 1 1 0; 0 0 0 −1]`; `rows` is scratch
/// of `8·(tw + 1)`. Each tile row's four input rows are split into even and odd columns of the
/// padded row, so that every step runs along whole rows of tiles.
#[inline(always)]
fn input_tiles<T: WithDType>(g: &Geometry, p: &[T], vc: &mut [T], t: usize, first: usize, rows: &mut [T]) {
    let (th, tw) = g.tiles();
    let half = tw + 1;
    let (even, odd) = rows.split_at_mut(4 * half);
    for ty in 0..th {
        // The tile's input rows 2·ty − top + a, split: even[a][j] = padded column 2j, odd[a][j]
        // = padded column 2j + 1 (padded column q is input column q − left).
        for a in 0..4 {
            let (e, o) = (&mut even[a * half..][..half], &mut odd[a * half..][..half]);
            e.fill(T::zero());
            o.fill(T::zero());
            let r = (2 * ty + a) as isize - g.top as isize;
            if r < 0 || r >= g.h as isize {
                continue;
            }
            let src = &p[r as usize * g.w..][..g.w];
            // Input column q is padded column q + left: pairs (2i, 2i + 1) go to even and odd
            // slot i + left/2 for an even `left`, to odd slot i + left/2 and even slot
            // i + left/2 + 1 for an odd one.
            // (Columns past the last tile's are not read, and not written.)
            let s = g.left / 2;
            let pairs = src.chunks_exact(2);
            let last = pairs.remainder().first().copied();
            let n = g.w / 2;
            let (first, second) = if g.left.is_multiple_of(2) {
                (&mut e[s..], &mut o[s..])
            } else {
                (&mut o[s..], &mut e[s + 1..])
            };
            let m = n.min(second.len());
            for ((a, b), pair) in first[..m].iter_mut().zip(&mut second[..m]).zip(pairs) {
                *a = pair[0];
                *b = pair[1];
            }
            // A pair whose second half lies past the last slot read may have its first inside;
            // so may an odd last column.
            let tail = if m < n { Some(src[2 * m]) } else { last };
            if let (Some(v), Some(slot)) = (tail, first.get_mut(m)) {
                *slot = v;
            }
        }
        // Bᵀ down the columns: rows d0 − d2, d1 + d2, d2 − d1, d1 − d3.
        for half_rows in [&mut *even, &mut *odd] {
            let (d0, rest) = half_rows.split_at_mut(half);
            let (d1, rest) = rest.split_at_mut(half);
            let (d2, d3) = rest.split_at_mut(half);
            for j in 0..half {
                let (a0, a1, a2, a3) = (d0[j], d1[j], d2[j], d3[j]);
                d0[j] = a0 - a2;
                d1[j] = a1 + a2;
                d2[j] = a2 - a1;
                d3[j] = a1 - a3;
            }
        }
        // B along the rows, for the tiles tx = 0..tw: columns 2tx .. 2tx + 3 are even[tx],
        // odd[tx], even[tx + 1], odd[tx + 1].
        let at = first + ty * tw;
        for a in 0..4 {
            let e = &even[a * half..][..half];
            let o = &odd[a * half..][..half];
            let (row0, rest) = vc[(4 * a) * t..(4 * a + 4) * t].split_at_mut(t);
            let (row1, rest) = rest.split_at_mut(t);
            let (row2, row3) = rest.split_at_mut(t);
            let (v0, v1) = (&mut row0[at..at + tw], &mut row1[at..at + tw]);
            let (v2, v3) = (&mut row2[at..at + tw], &mut row3[at..at + tw]);
            for tx in 0..tw {
                let (c0, c1, c2, c3) = (e[tx], o[tx], e[tx + 1], o[tx + 1]);
                v0[tx] = c0 - c2;
                v1[tx] = c1 + c2;
                v2[tx] = c2 - c1;
                v3[tx] = c1 - c3;
            }
        }
    }
}

/// `Aᵀ m A + bias` of every tile of one output plane `out` (`OH × OW`) from `mk` (this output
/// channel's 16 rows of `t` tiles, this image's from tile `first`), `Aᵀ = [1 1 1 0; 0 1 −1 −1]`;
/// `rows` is scratch of `12·tw`.
#[inline(always)]
fn output_tiles<T: WithDType>(g: &Geometry, mk: &[T], t: usize, first: usize, bias: T, out: &mut [T], rows: &mut [T]) {
    let (th, tw) = g.tiles();
    let (s, y) = rows.split_at_mut(8 * tw);
    for ty in 0..th {
        let at = first + ty * tw;
        let m = |xi: usize| &mk[xi * t + at..][..tw];
        // A along the rows: s[a][0] = m_a0 + m_a1 + m_a2, s[a][1] = m_a1 − m_a2 − m_a3.
        for a in 0..4 {
            let (m0, m1, m2, m3) = (m(4 * a), m(4 * a + 1), m(4 * a + 2), m(4 * a + 3));
            let (s0, s1) = s[2 * a * tw..(2 * a + 2) * tw].split_at_mut(tw);
            for tx in 0..tw {
                s0[tx] = m0[tx] + m1[tx] + m2[tx];
                s1[tx] = m1[tx] - m2[tx] - m3[tx];
            }
        }
        // Aᵀ down the columns, then the bias: y[r][b] for output row 2ty + r, column 2tx + b.
        for b in 0..2 {
            let sa = |a: usize| &s[(2 * a + b) * tw..][..tw];
            let (s0, s1, s2, s3) = (sa(0), sa(1), sa(2), sa(3));
            let (y0, y1) = y[2 * b * tw..(2 * b + 2) * tw].split_at_mut(tw);
            for tx in 0..tw {
                y0[tx] = s0[tx] + s1[tx] + s2[tx] + bias;
                y1[tx] = s1[tx] - s2[tx] - s3[tx] + bias;
            }
        }
        for r in 0..2 {
            let oy = 2 * ty + r;
            if oy >= g.oh {
                break;
            }
            let dst = &mut out[oy * g.ow..][..g.ow];
            let (c0, c1) = (&y[r * tw..][..tw], &y[(2 + r) * tw..][..tw]);
            let mut pairs = dst.chunks_exact_mut(2);
            for ((pair, &a), &b) in (&mut pairs).zip(c0).zip(c1) {
                pair[0] = a;
                pair[1] = b;
            }
            if let Some(v) = pairs.into_remainder().first_mut() {
                *v = c0[tw - 1];
            }
        }
    }
}

/// The tile transforms built for each instruction set ([`Kernels`]): the same additions in the
/// same order in every build (no multiply to fuse), so the same values.
mod transforms {
    use candle_core::WithDType;

    use super::{input_tiles, output_tiles};
    use crate::dense::Geometry;
    use crate::simd::Kernels;

    /// `$name(kernels, args…)`: `$inner(args…)` compiled for AVX-512, for AVX2 + FMA and
    /// portably, run in `kernels`' build (at most the detected one).
    macro_rules! builds {
        ($(#[$doc:meta])* $name:ident => $inner:ident($($arg:ident: $ty:ty),*)) => {
            $(#[$doc])*
            #[allow(clippy::too_many_arguments)]
            pub(super) fn $name<T: WithDType>(kernels: Kernels, $($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512<T: WithDType>($($arg: $ty),*) {
                    $inner($($arg),*)
                }
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<T: WithDType>($($arg: $ty),*) {
                    $inner($($arg),*)
                }
                match kernels.min(Kernels::detected()) {
                    // SAFETY: the build's instructions were detected on this CPU.
                    #[cfg(target_arch = "x86_64")]
                    Kernels::Avx512 => unsafe { avx512($($arg),*) },
                    #[cfg(target_arch = "x86_64")]
                    Kernels::Avx2 => unsafe { avx2($($arg),*) },
                    _ => $inner($($arg),*),
                }
            }
        };
    }

    builds!(
        /// [`input_tiles`] in `kernels`' build.
        input => input_tiles(g: &Geometry, p: &[T], vc: &mut [T], t: usize, first: usize, rows: &mut [T])
    );
    builds!(
        /// [`output_tiles`] in `kernels`' build.
        output => output_tiles(g: &Geometry, mk: &[T], t: usize, first: usize, bias: T, out: &mut [T], rows: &mut [T])
    );
}
