//! Every build of the hand-written kernels this CPU runs (portable, AVX2 + FMA, AVX-512) gives
//! the same f32 values as the portable one, forward and backward, and those values are the
//! f64 convolution's to f32 precision.

use candle_core::{DType, Device, Tensor, Var};
use extremal_ops::random::SeededRng;
use extremal_ops::*;

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    SeededRng::new(seed).normal_tensor(shape, 1.0, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// A depthwise convolution's settings over `c` channels, padding `[top, bottom, left, right]`.
fn depthwise_config(c: usize, stride: usize, dilation: usize, p: [usize; 4]) -> Conv2dConfig {
    Conv2dConfig {
        stride,
        groups: c,
        padding: Padding {
            top: p[0],
            bottom: p[1],
            left: p[2],
            right: p[3],
        },
        dilation,
    }
}

#[test]
fn depthwise_builds_agree_bit_for_bit() -> R<()> {
    let builds = Kernels::available();
    println!("kernel builds on this CPU: {builds:?}");
    // (channels, height, width, kernel, stride, dilation, padding top/bottom/left/right)
    let cases = [
        (5, 7, 7, 3, 1, 1, [1, 1, 1, 1]),
        (4, 14, 14, 5, 1, 1, [2, 2, 2, 2]),
        (3, 14, 14, 3, 2, 1, [0, 1, 0, 1]),
        (3, 9, 23, 5, 2, 1, [1, 2, 2, 1]),
        (2, 29, 70, 3, 1, 1, [1, 1, 1, 1]),
        (2, 40, 40, 3, 2, 1, [1, 1, 1, 1]),
        (2, 11, 13, 3, 1, 2, [2, 2, 2, 2]),
        (3, 1, 1, 3, 1, 1, [1, 1, 1, 1]),
    ];
    for (i, &(c, h, w, k, stride, dilation, p)) in cases.iter().enumerate() {
        let cfg = depthwise_config(c, stride, dilation, p);
        let x64 = (rand(&[2, c, h, w], 10 + i as u64) * 2.0)?;
        let w64 = rand(&[c, 1, k, k], 20 + i as u64);
        let b64 = rand(&[c], 30 + i as u64);
        let (x, wt, b) = (
            x64.to_dtype(DType::F32)?,
            w64.to_dtype(DType::F32)?,
            b64.to_dtype(DType::F32)?,
        );
        for act in [Activation::None, Activation::Relu6] {
            let reference = values(&conv2d_fused(&x64, &w64, Some(&b64), &cfg, act)?);
            let mut first: Option<(Vec<f32>, Vec<f32>)> = None;
            for &build in &builds {
                // Forward with constant weights (bias and activation fused), and the input
                // gradient of a random functional of it.
                let xv = Var::from_tensor(&x)?;
                let y = conv2d_fused_with(xv.as_tensor(), &wt, Some(&b), &cfg, act, build)?;
                let r = rand(y.dims(), 40 + i as u64).to_dtype(DType::F32)?;
                let grads = (&y * &r)?.sum_all()?.backward()?;
                let gx = values(grads.get(xv.as_tensor()).expect("input gradient"));
                let y = values(&y);
                let worst = y
                    .iter()
                    .zip(&reference)
                    .map(|(a, b)| (*a as f64 - *b as f64).abs())
                    .fold(0.0, f64::max);
                assert!(
                    worst < 1e-4,
                    "case {i} {act:?} {build:?}: {worst} from the f64 convolution"
                );
                match &first {
                    None => first = Some((y, gx)),
                    Some((y0, gx0)) => {
                        assert!(
                            y == *y0,
                            "case {i} {act:?}: {build:?} forward differs from the portable build"
                        );
                        assert!(
                            gx == *gx0,
                            "case {i} {act:?}: {build:?} input gradient differs from the portable build"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// The depthwise forward's two layouts (one plane at a time; sixteen planes interleaved, a
/// vector across them) give the same values bit for bit in every build, with the bias and
/// each activation fused, on full and short groups of planes (the planes of a batch of two
/// images counted together), strides 1 to 3, dilation and uneven padding.
#[test]
fn depthwise_layouts_agree_bit_for_bit() -> R<()> {
    // (batch, channels, height, width, kernel, stride, dilation, padding top/bottom/left/right)
    let cases = [
        (1, 16, 7, 7, 5, 1, 1, [2, 2, 2, 2]),
        (2, 21, 14, 14, 5, 2, 1, [1, 2, 1, 2]),
        (2, 24, 7, 7, 3, 1, 1, [1, 1, 1, 1]),
        (1, 17, 9, 23, 3, 2, 1, [0, 1, 1, 0]),
        (3, 7, 11, 13, 3, 1, 2, [2, 2, 2, 2]),
        (1, 40, 28, 28, 3, 3, 1, [1, 1, 1, 1]),
        (2, 9, 1, 1, 3, 1, 1, [1, 1, 1, 1]),
        (1, 3, 8, 8, 3, 2, 1, [1, 1, 1, 1]),
    ];
    for (i, &(n, c, h, w, k, stride, dilation, p)) in cases.iter().enumerate() {
        let cfg = depthwise_config(c, stride, dilation, p);
        let x = (rand(&[n, c, h, w], 50 + i as u64) * 2.0)?.to_dtype(DType::F32)?;
        let wt = rand(&[c, 1, k, k], 60 + i as u64).to_dtype(DType::F32)?;
        let b = rand(&[c], 70 + i as u64).to_dtype(DType::F32)?;
        for act in [Activation::None, Activation::Relu, Activation::Relu6] {
            let mut first: Option<Vec<f32>> = None;
            for build in Kernels::available() {
                for layout in [DepthwiseLayout::Planes, DepthwiseLayout::Interleaved] {
                    set_depthwise_layout(layout);
                    let y = values(&conv2d_fused_with(&x, &wt, Some(&b), &cfg, act, build)?);
                    set_depthwise_layout(DepthwiseLayout::Auto);
                    match &first {
                        None => first = Some(y),
                        Some(y0) => assert!(
                            y == *y0,
                            "case {i} {act:?} {build:?} {layout:?}: differs from the portable plane layout"
                        ),
                    }
                }
            }
        }
    }
    Ok(())
}
