//! Finite-difference checks (f64) of every kernel, and equality with candle where candle is right.

use candle_core::{DType, Device, Tensor};
use extremal_ops::gradcheck::max_relative_error;
use extremal_ops::random::SeededRng;
use extremal_ops::*;

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    SeededRng::new(seed).normal_tensor(shape, 1.0, &Device::Cpu).unwrap()
}

fn weighted(y: &Tensor, seed: u64) -> extremal_ops::Result<Tensor> {
    // A random linear functional of the output, so that every output element matters.
    let w = SeededRng::new(seed).normal_tensor(y.dims(), 1.0, y.device())?;
    Ok((y * w.to_dtype(y.dtype())?)?.sum_all()?)
}

fn check(f: &dyn Fn(&Tensor) -> extremal_ops::Result<Tensor>, x: &Tensor, what: &str) {
    let err = max_relative_error(f, x, 1e-6).unwrap();
    assert!(err < 1e-6, "{what}: gradient relative error {err}");
}

#[test]
fn max_pool_gradients_match_finite_differences() {
    let cases = [
        (Pool2d::new(2, 2), (7, 8)),
        (Pool2d::new(3, 2).with_padding(1), (7, 9)),
        (Pool2d::new(3, 2).with_ceil_mode(true), (9, 6)),
        (Pool2d::new(3, 1).with_padding(1).with_ceil_mode(true), (5, 7)),
        (Pool2d::new(3, 3), (6, 8)),
    ];
    for (i, (cfg, (h, w))) in cases.iter().enumerate() {
        let x = rand(&[2, 3, *h, *w], i as u64);
        check(
            &|x| weighted(&max_pool2d(x, cfg)?, 99),
            &x,
            &format!("max_pool2d {cfg:?} {h}x{w}"),
        );
    }
}

#[test]
fn max_pool_matches_candle_forward_and_the_generic_path() -> R<()> {
    let x = rand(&[2, 3, 8, 10], 1).to_dtype(DType::F32)?;
    let ours = max_pool2d(&x, &Pool2d::new(2, 2))?;
    let theirs = x.max_pool2d(2)?;
    let d = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(d, 0.0);
    // Output sizes as PyTorch computes them, ceil mode included.
    let cfg = Pool2d::new(3, 2).with_ceil_mode(true);
    assert_eq!(cfg.output_size(112, 112), Some((56, 56)));
    assert_eq!(cfg.output_size(7, 7), Some((3, 3)));
    assert_eq!(Pool2d::new(3, 2).with_padding(1).output_size(112, 149), Some((56, 75)));
    // The device-independent path (used off the CPU) gives the same values and gradients.
    for cfg in [
        Pool2d::new(3, 2).with_padding(1),
        Pool2d::new(3, 2).with_ceil_mode(true),
        Pool2d::new(2, 2),
    ] {
        let x = rand(&[2, 3, 9, 8], 5);
        let a = max_pool2d(&x, &cfg)?;
        let b = max_pool2d_primitive(&x, &cfg)?;
        assert_eq!((a - b)?.abs()?.max_all()?.to_scalar::<f64>()?, 0.0, "{cfg:?}");
        check(
            &|x| weighted(&max_pool2d_primitive(x, &cfg)?, 3),
            &x,
            "primitive max-pool",
        );
    }
    Ok(())
}

#[test]
fn max_pool_tie_sends_gradient_to_the_first_maximum() -> R<()> {
    let x = candle_core::Var::from_tensor(&Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu)?)?;
    let y = max_pool2d(&x, &Pool2d::new(2, 2))?;
    let g = y.sum_all()?.backward()?;
    let g = g.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(g, vec![1.0, 0.0, 0.0, 0.0]);
    Ok(())
}

/// PyTorch's max-pool, window by window: the running maximum starts at the window's first
/// input and is replaced by a larger input or a NaN. Returns each output's value and the
/// plane index of its argmax (`None` for an empty window).
fn max_pool_reference(x: &[f32], (h, w): (usize, usize), cfg: &Pool2d) -> Vec<(f32, Option<usize>)> {
    let (oh, ow) = cfg.output_size(h, w).unwrap();
    let span = |o: usize, s: usize, p: usize, k: usize, n: usize| {
        let first = (o * s) as isize - p as isize;
        (
            first.max(0) as usize,
            (first + k as isize).min(n as isize).max(0) as usize,
        )
    };
    let mut out = Vec::new();
    for oy in 0..oh {
        let (ys, ye) = span(oy, cfg.stride.0, cfg.padding.0, cfg.kernel.0, h);
        for ox in 0..ow {
            let (xs, xe) = span(ox, cfg.stride.1, cfg.padding.1, cfg.kernel.1, w);
            let mut best: Option<(f32, usize)> = None;
            for yy in ys..ye {
                for xx in xs..xe {
                    let v = x[yy * w + xx];
                    if best.is_none_or(|(b, _)| v > b || v.is_nan()) {
                        best = Some((v, yy * w + xx));
                    }
                }
            }
            out.push(best.map_or((f32::NEG_INFINITY, None), |(v, i)| (v, Some(i))));
        }
    }
    out
}

#[test]
fn max_pool_kernel_follows_pytorchs_rule_on_ties_and_nans() -> R<()> {
    let cases = [
        Pool2d::new(3, 2).with_padding(1),
        Pool2d::new(3, 2).with_ceil_mode(true),
        Pool2d::new(2, 2),
        Pool2d::new(3, 1).with_padding(1),
        Pool2d {
            kernel: (2, 3),
            stride: (1, 2),
            padding: (1, 1),
            ceil_mode: true,
        },
    ];
    for (c, cfg) in cases.iter().enumerate() {
        let (n, ch, h, w) = (2, 3, 9, 11);
        // Values on a coarse grid (many exact ties, both zeros), a few NaNs.
        let mut v: Vec<f32> = rand(&[n * ch * h * w], c as u64)
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| (v * 2.0).round() / 2.0)
            .collect();
        v.iter_mut().step_by(17).for_each(|v| *v = -0.0);
        if c % 2 == 0 {
            v.iter_mut().skip(5).step_by(41).for_each(|v| *v = f32::NAN);
        }
        let x = candle_core::Var::from_tensor(&Tensor::from_vec(v.clone(), (n, ch, h, w), &Device::Cpu)?)?;
        let y = max_pool2d(x.as_tensor(), cfg)?;
        let (oh, ow) = cfg.output_size(h, w).unwrap();
        let g_out = rand(&[n, ch, oh, ow], 7 + c as u64).to_dtype(DType::F32)?;
        let grads = (&y * &g_out)?.sum_all()?.backward()?;
        let gx = grads.get(x.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
        let (y, g_out) = (
            y.flatten_all()?.to_vec1::<f32>()?,
            g_out.flatten_all()?.to_vec1::<f32>()?,
        );
        let mut expected_gx = vec![0f32; v.len()];
        for plane in 0..n * ch {
            let reference = max_pool_reference(&v[plane * h * w..(plane + 1) * h * w], (h, w), cfg);
            for (o, (value, argmax)) in reference.into_iter().enumerate() {
                let got = y[plane * oh * ow + o];
                assert!(
                    got == value || (got.is_nan() && value.is_nan()),
                    "{cfg:?}: plane {plane} output {o}: {got} vs {value}"
                );
                if let Some(i) = argmax {
                    expected_gx[plane * h * w + i] += g_out[plane * oh * ow + o];
                }
            }
        }
        assert_eq!(gx, expected_gx, "{cfg:?}: input gradient");
    }
    Ok(())
}

#[test]
fn add_activation_equals_the_sum_then_the_activation() -> R<()> {
    for act in [Activation::Relu, Activation::Relu6, Activation::None] {
        for dtype in [DType::F32, DType::F64] {
            let a = candle_core::Var::from_tensor(&(rand(&[2, 3, 5, 7], 1) * 4.0)?.to_dtype(dtype)?)?;
            let b = candle_core::Var::from_tensor(&(rand(&[2, 3, 5, 7], 2) * 4.0)?.to_dtype(dtype)?)?;
            let w = rand(&[2, 3, 5, 7], 3).to_dtype(dtype)?;
            let fused = add_activation(a.as_tensor(), b.as_tensor(), act)?;
            let plain = act.apply(&(a.as_tensor() + b.as_tensor())?)?;
            let d = (&fused - &plain)?
                .abs()?
                .max_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            assert_eq!(d, 0.0, "{act:?} {dtype:?}: forward");
            for rule in [GradientRule::Standard, GradientRule::Guided] {
                let _rule = set_gradient_rule(rule);
                let gf = (&fused * &w)?.sum_all()?.backward()?;
                let gp = (&plain * &w)?.sum_all()?.backward()?;
                for v in [&a, &b] {
                    let (x, y) = (gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
                    let d = (x - y)?.abs()?.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                    assert_eq!(d, 0.0, "{act:?} {dtype:?} {rule:?}: gradient");
                }
            }
        }
    }
    let a = rand(&[1, 2, 3, 3], 4);
    let b = rand(&[1, 2, 3, 3], 5);
    check(
        &|x| weighted(&add_activation(x, &b, Activation::Relu)?, 6),
        &a,
        "add_activation",
    );
    Ok(())
}

#[test]
fn conv_gradients_match_finite_differences() {
    type Case = (Conv2dConfig, (usize, usize, usize, usize), (usize, usize));
    let cases: Vec<Case> = vec![
        (Conv2dConfig::default(), (4, 3, 3, 3), (7, 8)),
        (
            Conv2dConfig {
                stride: 2,
                padding: Padding::uniform(1),
                ..Default::default()
            },
            (4, 3, 3, 3),
            (7, 8),
        ),
        (
            Conv2dConfig {
                stride: 2,
                padding: Padding {
                    top: 0,
                    bottom: 1,
                    left: 1,
                    right: 2,
                },
                ..Default::default()
            },
            (2, 3, 3, 3),
            (9, 6),
        ),
        (
            Conv2dConfig {
                dilation: 2,
                padding: Padding::uniform(2),
                ..Default::default()
            },
            (2, 3, 3, 3),
            (7, 9),
        ),
        (
            Conv2dConfig {
                groups: 3,
                stride: 2,
                padding: Padding::uniform(2),
                ..Default::default()
            },
            (3, 1, 5, 5),
            (8, 7),
        ),
        (
            Conv2dConfig {
                groups: 3,
                stride: 2,
                dilation: 2,
                padding: Padding {
                    top: 1,
                    bottom: 2,
                    left: 2,
                    right: 1,
                },
            },
            (3, 1, 3, 3),
            (9, 8),
        ),
        (
            Conv2dConfig {
                stride: 2,
                ..Default::default()
            },
            (4, 3, 7, 7),
            (13, 16),
        ),
    ];
    let mut cases = cases;
    // 1×1 convolutions (the matmul path), stride 1 and 2.
    cases.push((Conv2dConfig::default(), (5, 3, 1, 1), (7, 8)));
    cases.push((
        Conv2dConfig {
            stride: 2,
            ..Default::default()
        },
        (5, 3, 1, 1),
        (7, 8),
    ));
    for (i, (cfg, wshape, (h, w))) in cases.iter().enumerate() {
        let x = rand(&[2, 3, *h, *w], 10 + i as u64);
        let k = rand(&[wshape.0, wshape.1, wshape.2, wshape.3], 20 + i as u64);
        let b = rand(&[wshape.0], 30 + i as u64);
        check(
            &|x| weighted(&conv2d(x, &k, Some(&b), cfg)?, 5),
            &x,
            &format!("conv2d input {cfg:?}"),
        );
        check(
            &|k| weighted(&conv2d(&x, k, Some(&b), cfg)?, 5),
            &k,
            &format!("conv2d weight {cfg:?}"),
        );
    }
}

#[test]
fn conv_matches_candle_where_candle_is_right() -> R<()> {
    let x = rand(&[2, 6, 9, 9], 3);
    for (groups, cin, k) in [(1, 6, 3), (6, 1, 3), (2, 3, 3), (1, 6, 1)] {
        let pad = k / 2;
        let k = rand(&[6, cin, k, k], 4);
        for stride in [1, 2] {
            let cfg = Conv2dConfig {
                stride,
                groups,
                padding: Padding::uniform(pad),
                dilation: 1,
            };
            let ours = conv2d(&x, &k, None, &cfg)?;
            let theirs = x.conv2d(&k, pad, stride, 1, groups)?;
            let d = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(d < 1e-12, "groups {groups} stride {stride}: {d}");
        }
    }
    Ok(())
}

#[test]
fn same_padding_is_tensorflows() {
    assert_eq!(same_padding(224, 3, 2, 1), (0, 1));
    assert_eq!(same_padding(224, 3, 1, 1), (1, 1));
    assert_eq!(same_padding(112, 5, 2, 1), (1, 2));
    assert_eq!(same_padding(7, 1, 1, 1), (0, 0));
    assert_eq!(same_padding(298, 3, 2, 1), (0, 1));
}

#[test]
fn resize_and_adaptive_pool_gradients() {
    let x = rand(&[1, 2, 5, 7], 7);
    check(&|x| weighted(&resize_bilinear(x, 8, 4)?, 1), &x, "resize up/down");
    check(&|x| weighted(&resize_bilinear(x, 3, 11)?, 2), &x, "resize down/up");
    check(
        &|x| weighted(&adaptive_avg_pool2d(x, 3, 3)?, 3),
        &x,
        "adaptive pool 3x3",
    );
    check(
        &|x| weighted(&adaptive_avg_pool2d(x, 1, 1)?, 4),
        &x,
        "adaptive pool 1x1",
    );
}

#[test]
fn resize_matches_candle_forward() -> R<()> {
    let x = rand(&[1, 3, 9, 13], 8).to_dtype(DType::F32)?;
    for (h, w) in [(18, 26), (5, 7), (224, 224)] {
        let ours = resize_bilinear(&x, h, w)?;
        let theirs = x.upsample_bilinear2d(h, w, false)?;
        let d = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-5, "{h}x{w}: {d}");
    }
    Ok(())
}

#[test]
fn adaptive_pool_bins_are_pytorchs() -> R<()> {
    // 5 -> 3 bins: [0,2), [1,4), [3,5).
    let x = Tensor::new(&[[[[1f64, 2., 3., 4., 5.]]]], &Device::Cpu)?;
    let y = adaptive_avg_pool2d(&x, 1, 3)?.flatten_all()?.to_vec1::<f64>()?;
    assert_eq!(y, vec![1.5, 3.0, 4.5]);
    Ok(())
}

#[test]
fn relu_gradients_are_pytorchs_at_the_kinks() -> R<()> {
    let x = candle_core::Var::new(&[-1f64, 0.0, 0.5, 6.0, 7.0], &Device::Cpu)?;
    let g = relu(&x)?.sum_all()?.backward()?;
    assert_eq!(g.get(&x).unwrap().to_vec1::<f64>()?, vec![0., 0., 1., 1., 1.]);
    let g = relu6(&x)?.sum_all()?.backward()?;
    assert_eq!(g.get(&x).unwrap().to_vec1::<f64>()?, vec![0., 0., 1., 0., 0.]);
    assert_eq!(relu6(&x)?.to_vec1::<f64>()?, vec![0., 0., 0.5, 6., 6.]);
    let x = rand(&[3, 4], 9);
    check(&|x| weighted(&relu6(&(x * 4.0)?)?, 1), &x, "relu6");
    check(&|x| weighted(&relu(x)?, 1), &x, "relu");
    Ok(())
}

#[test]
fn linear_gradients_and_values() -> R<()> {
    let x = rand(&[3, 7], 1);
    let w = rand(&[7, 5], 2);
    let b = rand(&[5], 3);
    check(&|x| weighted(&linear(x, &w, Some(&b))?, 4), &x, "linear input");
    check(
        &|w| weighted(&linear(&x, w, Some(&b))?, 4),
        &w,
        "linear weight (tracked: plain matmul)",
    );
    let d = (linear(&x, &w, Some(&b))? - x.matmul(&w)?.broadcast_add(&b)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    assert!(d < 1e-12);
    Ok(())
}

#[test]
fn grouped_conv_input_gradient_with_constant_weights() {
    // Grouped but not depthwise (the const-weight path transposes the kernel per group).
    let x = rand(&[2, 4, 9, 7], 70);
    let k = rand(&[6, 2, 3, 3], 71);
    for stride in [1, 2] {
        let cfg = Conv2dConfig {
            stride,
            groups: 2,
            padding: Padding {
                top: 1,
                bottom: 0,
                left: 2,
                right: 1,
            },
            dilation: 1,
        };
        check(
            &|x| weighted(&conv2d(x, &k, None, &cfg)?, 8),
            &x,
            &format!("grouped conv stride {stride}"),
        );
    }
}

#[test]
fn fused_conv_bias_and_activation_gradients() {
    // Dense (im2col + gemm, 1×1) and depthwise kernels with the bias and activation fused in,
    // input gradients against finite differences. Inputs are scaled so that both ReLU6 kinks
    // are crossed.
    let cases = [
        (6, 3, 3, 1, 1),
        (6, 3, 3, 2, 1),
        (6, 6, 1, 1, 1),
        (6, 1, 5, 2, 6),
        (6, 1, 3, 1, 6),
    ];
    for (i, &(c_out, c_per_group, k, stride, groups)) in cases.iter().enumerate() {
        let c_in = c_per_group * groups;
        let x = (rand(&[2, c_in, 9, 8], 80 + i as u64) * 3.0).unwrap();
        let w = rand(&[c_out, c_per_group, k, k], 90 + i as u64);
        let b = rand(&[c_out], 100 + i as u64);
        let cfg = Conv2dConfig {
            stride,
            groups,
            padding: Padding {
                top: k / 2,
                bottom: k / 2 + 1,
                left: k / 2,
                right: k / 2,
            },
            dilation: 1,
        };
        for act in [Activation::None, Activation::Relu, Activation::Relu6] {
            check(
                &|x| weighted(&conv2d_fused(x, &w, Some(&b), &cfg, act)?, 9),
                &x,
                &format!("fused conv {cfg:?} {act:?}"),
            );
            // The fused op equals the unfused composition.
            let fused = conv2d_fused(&x, &w, Some(&b), &cfg, act).unwrap();
            let plain = act.apply(&conv2d(&x, &w, Some(&b), &cfg).unwrap()).unwrap();
            let d = (fused - plain).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                d.to_scalar::<f64>().unwrap() < 1e-12,
                "fused != unfused for {cfg:?} {act:?}"
            );
        }
    }
}

/// An input whose channels are mostly zero (a hard channel mask upstream) takes the gemm over
/// its live channels only: the same values as candle's convolution, with a bias, strided, 3×3
/// and 1×1, with one or no live channel, and per image (the two images keep different ones).
#[test]
fn conv_over_few_live_channels_equals_candles() -> R<()> {
    let x = rand(&[2, 32, 9, 11], 11).to_dtype(DType::F32)?;
    for live in [vec![vec![3usize, 17, 30], vec![0, 5]], vec![vec![7], vec![]]] {
        let mut m = vec![0f32; 2 * 32];
        for (i, keep) in live.iter().enumerate() {
            keep.iter().for_each(|&c| m[i * 32 + c] = 1.0);
        }
        let m = Tensor::from_vec(m, (2, 32, 1, 1), x.device())?;
        let xm = x.broadcast_mul(&m)?;
        for (k, stride) in [(1, 1), (1, 2), (3, 1), (3, 2)] {
            let w = rand(&[6, 32, k, k], 12).to_dtype(DType::F32)?;
            let b = rand(&[6], 13).to_dtype(DType::F32)?;
            let cfg = Conv2dConfig {
                stride,
                padding: Padding::uniform(k / 2),
                ..Default::default()
            };
            let ours = conv2d(&xm, &w, Some(&b), &cfg)?;
            let theirs = xm
                .conv2d(&w, k / 2, stride, 1, 1)?
                .broadcast_add(&b.reshape((1, 6, 1, 1))?)?;
            let err = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-5, "k {k} stride {stride} live {live:?}: {err}");
            let plain = conv2d(&xm, &w, None, &cfg)?;
            let theirs = xm.conv2d(&w, k / 2, stride, 1, 1)?;
            let err = (plain - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-5, "no bias, k {k} stride {stride} live {live:?}: {err}");
            // One image alone takes the same path, its gemm written in place.
            let one = xm.narrow(0, 0, 1)?;
            let err = (conv2d(&one, &w, None, &cfg)? - one.conv2d(&w, k / 2, stride, 1, 1)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(err < 1e-5, "one image, k {k} stride {stride} live {live:?}: {err}");
        }
    }
    Ok(())
}

#[test]
fn fast_conv_equals_candles_forward_and_input_gradient_in_f32() -> R<()> {
    // Candle's convolution (forward and backward) is right on these shapes: the fast op must
    // agree to 1e-5 relative, forward and input gradient, dense, strided, grouped, 1×1 and
    // the 7×7/2 stem, on a non-square input.
    let x32 = rand(&[2, 8, 20, 28], 5).to_dtype(DType::F32)?;
    for (c_out, c_per_group, k, stride, groups) in [
        (16, 8, 3, 1, 1),
        (16, 8, 3, 2, 1),
        (16, 8, 1, 1, 1),
        (16, 8, 1, 2, 1),
        (16, 4, 3, 1, 2),
        (4, 8, 7, 2, 1),
    ] {
        let w = rand(&[c_out, c_per_group, k, k], 6).to_dtype(DType::F32)?;
        let pad = k / 2;
        let cfg = Conv2dConfig {
            stride,
            groups,
            padding: Padding::uniform(pad),
            dilation: 1,
        };
        let xv = candle_core::Var::from_tensor(&x32)?;
        let ours = conv2d(xv.as_tensor(), &w, None, &cfg)?;
        let g_ours = weighted(&ours, 7)?.backward()?.get(xv.as_tensor()).unwrap().clone();
        let theirs = xv.as_tensor().conv2d(&w, pad, stride, 1, groups)?;
        let g_theirs = weighted(&theirs, 7)?.backward()?.get(xv.as_tensor()).unwrap().clone();
        let rel = |a: &Tensor, b: &Tensor| -> R<f32> {
            let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / scale)
        };
        let (ey, eg) = (rel(&ours, &theirs)?, rel(&g_ours, &g_theirs)?);
        assert!(
            ey < 1e-5 && eg < 1e-5,
            "k {k} stride {stride} groups {groups}: forward {ey}, gradient {eg}"
        );
    }
    Ok(())
}

#[test]
fn avg_pool_gradients_and_pytorch_divisors() -> R<()> {
    let x = rand(&[2, 3, 9, 7], 120);
    for (k, s, p, ceil) in [
        (2, 2, 0, false),
        (3, 2, 1, false),
        (3, 2, 1, true),
        (2, 2, 0, true),
        (3, 1, 1, false),
    ] {
        let pool = Pool2d::new(k, s).with_padding(p).with_ceil_mode(ceil);
        for include in [true, false] {
            check(
                &|x| weighted(&avg_pool2d(x, &pool, include)?, 11),
                &x,
                &format!("avg_pool2d k{k} s{s} p{p} ceil {ceil} include_pad {include}"),
            );
        }
    }
    // PyTorch: F.avg_pool2d(arange(25).view(1,1,5,5), 2, 2, 0, ceil_mode=True) =
    // [[3, 5, 6.5], [13, 15, 16.5], [20.5, 22.5, 24]] (the last window is clipped to 1 pixel
    // wide and divides by 2·1).
    let x = Tensor::arange(0f64, 25., &Device::Cpu)?.reshape((1, 1, 5, 5))?;
    let y = avg_pool2d(&x, &Pool2d::new(2, 2).with_ceil_mode(true), true)?;
    let y: Vec<f64> = y.flatten_all()?.to_vec1()?;
    assert_eq!(y, vec![3., 5., 6.5, 13., 15., 16.5, 20.5, 22.5, 24.]);
    // count_include_pad=True with padding 1: the corner window [0, 1; 5, 6] is divided by 9.
    let y = avg_pool2d(&x, &Pool2d::new(3, 2).with_padding(1), true)?;
    let corner = y.flatten_all()?.to_vec1::<f64>()?[0];
    assert!((corner - 12.0 / 9.0).abs() < 1e-12);
    let y = avg_pool2d(&x, &Pool2d::new(3, 2).with_padding(1), false)?;
    assert!((y.flatten_all()?.to_vec1::<f64>()?[0] - 3.0).abs() < 1e-12);
    Ok(())
}

#[test]
fn gaussian_blur_gradients_and_borders() -> R<()> {
    let x = rand(&[1, 2, 11, 8], 130);
    for border in [Border::Zero, Border::Reflect, Border::Replicate] {
        for sigma in [0.7, 2.0, 3.0] {
            check(
                &|x| weighted(&gaussian_blur(x, sigma, border)?, 12),
                &x,
                &format!("gaussian_blur sigma {sigma} {border:?}"),
            );
        }
        // A constant image stays constant under reflect and replicate, and loses mass at the
        // border under zero padding.
        let ones = Tensor::ones((1, 1, 6, 9), DType::F64, &Device::Cpu)?;
        let y = gaussian_blur(&ones, 1.5, border)?;
        let (lo, hi) = (y.min_all()?.to_scalar::<f64>()?, y.max_all()?.to_scalar::<f64>()?);
        match border {
            Border::Zero => assert!(lo < 0.9 && hi <= 1.0 + 1e-12),
            // (TorchRay's taps are normalised in f32.)
            _ => assert!((lo - 1.0).abs() < 1e-6 && (hi - 1.0).abs() < 1e-6, "{border:?}"),
        }
    }
    // TorchRay's kernel: 2⌈4σ⌉ + 1 taps, normalised.
    let k = gaussian_kernel(1.2);
    assert_eq!(k.len(), 11);
    assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-6);
    // An impulse next to the edge: reflect mirrors it around pixel 0 (… x1 x0 | x1 …), so
    // pixel 0 receives it from both sides.
    let mut v = vec![0f64; 5];
    v[1] = 1.0;
    let x = Tensor::from_vec(v, (1, 1, 1, 5), &Device::Cpu)?;
    let y = gaussian_blur(&x, 0.5, Border::Reflect)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let k = gaussian_kernel(0.5); // 5 taps, centre 2
    assert!((y[0] - 2.0 * k[3]).abs() < 1e-6, "{y:?}");
    Ok(())
}

/// `irfft2` against the definition (as `torch.fft.irfftn`): a complex inverse transform along
/// `H`, `Z[n, l] = Σ_k X[k, l] e^{2πikn/H}`, then the real inverse along `W` of the half
/// spectrum, `y[n, m] = Σ_l c_l Re(Z[n, l] e^{2πilm/W}) / √(HW)`, where `c_l = 1` for the
/// columns that are their own mirror (the first, and the last when `W` is even) and 2 for
/// the others, which stand for themselves and their mirror.
fn irfft2_by_definition(x: &[f64], h: usize, w: usize) -> Vec<f64> {
    let wf = w / 2 + 1;
    let tau = 2.0 * std::f64::consts::PI;
    let mut y = vec![0.0; h * w];
    for n in 0..h {
        for l in 0..wf {
            let (mut zr, mut zi) = (0.0, 0.0);
            for k in 0..h {
                let (re, im) = (x[(k * wf + l) * 2], x[(k * wf + l) * 2 + 1]);
                let a = tau * (k * n) as f64 / h as f64;
                zr += re * a.cos() - im * a.sin();
                zi += re * a.sin() + im * a.cos();
            }
            let c = if l == 0 || (w.is_multiple_of(2) && l == w / 2) {
                1.0
            } else {
                2.0
            };
            for m in 0..w {
                let a = tau * (l * m) as f64 / w as f64;
                y[n * w + m] += c * (zr * a.cos() - zi * a.sin()) / ((h * w) as f64).sqrt();
            }
        }
    }
    y
}

#[test]
fn irfft2_matches_its_definition_and_finite_differences() -> R<()> {
    for (h, w) in [(5, 6), (4, 7), (6, 8), (1, 2)] {
        let x = rand(&[2, 3, h, w / 2 + 1, 2], (h * 10 + w) as u64);
        let y = irfft2(&x, w)?;
        assert_eq!(y.dims(), &[2, 3, h, w]);
        let xs = x.flatten_all()?.to_vec1::<f64>()?;
        let ys = y.flatten_all()?.to_vec1::<f64>()?;
        let plane = h * (w / 2 + 1) * 2;
        for p in 0..6 {
            let want = irfft2_by_definition(&xs[p * plane..(p + 1) * plane], h, w);
            for (a, b) in ys[p * h * w..(p + 1) * h * w].iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "irfft2 {h}x{w}: {a} vs {b}");
            }
        }
        check(&|x| weighted(&irfft2(x, w)?, 7), &x, &format!("irfft2 {h}x{w}"));
        // f32 agrees with f64.
        let y32 = irfft2(&x.to_dtype(DType::F32)?, w)?.to_dtype(DType::F64)?;
        assert!((y32 - &y)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-5);
    }
    // A spectrum of the wrong width is refused with a message.
    let bad = rand(&[1, 3, 4, 5, 2], 1);
    let e = irfft2(&bad, 6).unwrap_err().to_string();
    assert!(e.contains("half spectrum"), "{e}");
    Ok(())
}
