//! Depthwise convolution (one filter per channel) as a custom op: candle runs grouped
//! convolutions as one convolution per group, which is very slow for thousands of groups.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};

use crate::{Conv2dConfig, Result};

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
    /// Calls `f(x_index, w_index, y_index)` for every product term of the convolution.
    #[inline(always)]
    fn visit(&self, mut f: impl FnMut(usize, usize, usize)) {
        let g = *self;
        for nc in 0..g.n * g.c {
            let ch = nc % g.c;
            let xb = nc * g.h * g.w;
            let yb = nc * g.oh * g.ow;
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let wi = (ch * g.kh + ky) * g.kw + kx;
                    let dy = (ky * g.dilation) as isize - g.top;
                    let dx = (kx * g.dilation) as isize - g.left;
                    // Output columns whose input column lies inside the image.
                    let ox_lo = if dx >= 0 {
                        0
                    } else {
                        ((-dx) as usize).div_ceil(g.stride)
                    };
                    let ox_hi = {
                        let lim = g.w as isize - dx; // need ox*stride < lim
                        if lim <= 0 {
                            0
                        } else {
                            ((lim as usize).div_ceil(g.stride)).min(g.ow)
                        }
                    };
                    for oy in 0..g.oh {
                        let iy = (oy * g.stride) as isize + dy;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        let xrow = xb + iy as usize * g.w;
                        let yrow = yb + oy * g.ow;
                        for ox in ox_lo..ox_hi {
                            let ix = (ox * g.stride) as isize + dx;
                            f(xrow + ix as usize, wi, yrow + ox);
                        }
                    }
                }
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

pub(crate) fn depthwise_conv2d(x: &Tensor, weight: &Tensor, cfg: &Conv2dConfig) -> Result<Tensor> {
    let (_, _, kh, kw) = weight.dims4()?;
    let g = geometry(x.dims4()?, (kh, kw), cfg);
    Ok(x.contiguous()?
        .apply_op2(&weight.contiguous()?, Depthwise { g, part: Part::Forward })?)
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
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("depthwise conv2d: inputs must be contiguous"),
    }
}

fn run<T: WithDType>(g: &Geometry, part: Part, a: &[T], b: &[T]) -> Vec<T> {
    match part {
        Part::Forward => {
            let mut y = vec![T::zero(); g.n * g.c * g.oh * g.ow];
            g.visit(|xi, wi, yi| y[yi] += a[xi] * b[wi]);
            y
        }
        Part::GradInput => {
            let mut gx = vec![T::zero(); g.n * g.c * g.h * g.w];
            g.visit(|xi, wi, yi| gx[xi] += a[yi] * b[wi]);
            gx
        }
        Part::GradWeight => {
            let mut gw = vec![T::zero(); g.c * g.kh * g.kw];
            g.visit(|xi, wi, yi| gw[wi] += a[xi] * b[yi]);
            gw
        }
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
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(run(g, self.part, slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(run(g, self.part, slice::<f64>(s1, l1)?, slice::<f64>(s2, l2)?))
            }
            _ => candle_core::bail!("depthwise conv2d: only f32 and f64 inputs of one dtype are supported"),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                w,
                &Depthwise {
                    g: self.g,
                    part: Part::GradInput,
                },
            )?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(x.apply_op2_no_bwd(
                &grad,
                &Depthwise {
                    g: self.g,
                    part: Part::GradWeight,
                },
            )?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}
