//! Depthwise convolution (one filter per channel) as a custom op: candle runs grouped
//! convolutions as one convolution per group, which is very slow for thousands of groups.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, WithDType};

use rayon::prelude::*;

use crate::act::{act_grad, activate, Activation};
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
    /// Calls `f(x_start, w_index, y_start, len)` for every run of one output row that one
    /// filter tap reads inside the image: outputs `y_start..y_start + len` of the plane read the
    /// inputs `x_start + o·stride` (indices relative to the plane and the channel's filter).
    #[inline(always)]
    fn visit_runs(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let g = *self;
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let wi = ky * g.kw + kx;
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
                if ox_lo >= ox_hi {
                    continue;
                }
                for oy in 0..g.oh {
                    let iy = (oy * g.stride) as isize + dy;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let ix = (ox_lo * g.stride) as isize + dx;
                    f(iy as usize * g.w + ix as usize, wi, oy * g.ow + ox_lo, ox_hi - ox_lo);
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
    /// Fused activation (forward only; the backward reads its gradient from the output).
    act: Activation,
}

fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("depthwise conv2d: inputs must be contiguous"),
    }
}

impl Depthwise {
    fn run<T: WithDType>(&self, a: &[T], b: &[T]) -> candle_core::Result<Vec<T>> {
        let g = &self.g;
        let (xs, ys, ks) = (g.h * g.w, g.oh * g.ow, g.kh * g.kw);
        Ok(match self.part {
            Part::Forward => {
                let bias: Option<Vec<T>> = match &self.bias {
                    Some(t) => Some(t.flatten_all()?.to_vec1::<T>()?),
                    None => None,
                };
                let mut y = vec![T::zero(); g.n * g.c * ys];
                y.par_chunks_mut(ys).enumerate().for_each(|(nc, y)| {
                    let (x, w) = (&a[nc * xs..][..xs], &b[(nc % g.c) * ks..][..ks]);
                    if let Some(bias) = &bias {
                        y.fill(bias[nc % g.c]);
                    }
                    let s = g.stride;
                    g.visit_runs(|xi, wi, yi, len| {
                        let (wv, y) = (w[wi], &mut y[yi..yi + len]);
                        if s == 1 {
                            for (y, &x) in y.iter_mut().zip(&x[xi..xi + len]) {
                                *y += x * wv;
                            }
                        } else {
                            for (y, &x) in y.iter_mut().zip(x[xi..].iter().step_by(s)) {
                                *y += x * wv;
                            }
                        }
                    });
                });
                activate(&mut y, self.act);
                y
            }
            Part::GradInput => {
                let mut gx = vec![T::zero(); g.n * g.c * xs];
                gx.par_chunks_mut(xs).enumerate().for_each(|(nc, gx)| {
                    let (gy, w) = (&a[nc * ys..][..ys], &b[(nc % g.c) * ks..][..ks]);
                    let s = g.stride;
                    g.visit_runs(|xi, wi, yi, len| {
                        let (wv, gy) = (w[wi], &gy[yi..yi + len]);
                        if s == 1 {
                            for (gx, &gy) in gx[xi..xi + len].iter_mut().zip(gy) {
                                *gx += gy * wv;
                            }
                        } else {
                            for (gx, &gy) in gx[xi..].iter_mut().step_by(s).zip(gy) {
                                *gx += gy * wv;
                            }
                        }
                    });
                });
                gx
            }
            Part::GradWeight => {
                let mut gw = vec![T::zero(); g.c * ks];
                gw.par_chunks_mut(ks).enumerate().for_each(|(c, gw)| {
                    for n in 0..g.n {
                        let nc = n * g.c + c;
                        let (x, gy) = (&a[nc * xs..][..xs], &b[nc * ys..][..ys]);
                        let s = g.stride;
                        g.visit_runs(|xi, wi, yi, len| {
                            let gy = &gy[yi..yi + len];
                            let dot = if s == 1 {
                                x[xi..xi + len].iter().zip(gy).fold(T::zero(), |a, (&x, &g)| a + x * g)
                            } else {
                                x[xi..]
                                    .iter()
                                    .step_by(s)
                                    .zip(gy)
                                    .fold(T::zero(), |a, (&x, &g)| a + x * g)
                            };
                            gw[wi] += dot;
                        });
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
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                CpuStorage::F32(self.run(slice::<f32>(s1, l1)?, slice::<f32>(s2, l2)?)?)
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                CpuStorage::F64(self.run(slice::<f64>(s1, l1)?, slice::<f64>(s2, l2)?)?)
            }
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
        let grad = act_grad(&grad.contiguous()?, res, self.act)?;
        let part = |part| Depthwise {
            g: self.g,
            part,
            bias: None,
            act: Activation::None,
        };
        let gx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &part(Part::GradInput))?)
        } else {
            None
        };
        let gw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &part(Part::GradWeight))?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}
