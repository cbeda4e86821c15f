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

/// `y = conv(x)` with `cfg` and its input gradient against `r` (of `Σ y·r`), with an algorithm
/// and a build of the kernels.
fn conv_and_gradient(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    r: &Tensor,
    cfg: &Conv2dConfig,
    act: Activation,
    (algorithm, build): (ConvAlgorithm, Kernels),
) -> R<(Tensor, Tensor)> {
    let x = Var::from_tensor(x)?;
    set_conv_algorithm(algorithm);
    let run = || -> R<(Tensor, Tensor)> {
        let y = conv2d_fused_with(x.as_tensor(), w, b, cfg, act, build)?;
        let grads = (&y * r)?.sum_all()?.backward()?;
        let gx = grads.get(x.as_tensor()).ok_or("no input gradient")?.clone();
        Ok((y, gx))
    };
    let out = run();
    set_conv_algorithm(ConvAlgorithm::Auto);
    out
}

/// The largest difference between `a` and `b` relative to `b`'s largest magnitude (or 1).
fn relative_gap(a: &Tensor, b: &Tensor) -> R<f64> {
    let (a, b) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
    let top = b.abs()?.max_all()?.to_scalar::<f64>()?.max(1.0);
    Ok((a - &b)?.abs()?.max_all()?.to_scalar::<f64>()? / top)
}

/// Winograd's F(2×2, 3×3) gives the im2col path's output and input gradient to the dtype's
/// precision (f64: 1e-12, f32: 1e-5 of the largest value), with and without bias and ReLU,
/// on odd and even sizes, planes smaller than a tile and every padding before the input it
/// takes (0–2) with padding after up to 3; in f32 its values are not the im2col path's bit
/// for bit (so it ran), and every build of its tile transforms gives the same bits.
#[test]
fn winograd_matches_im2col() -> R<()> {
    // (batch, c_in, c_out, height, width, padding top/bottom/left/right)
    let cases = [
        (1, 3, 5, 7, 7, [1, 1, 1, 1]),
        (2, 17, 16, 14, 14, [1, 1, 1, 1]),
        (1, 4, 6, 9, 23, [0, 0, 0, 0]),
        (2, 5, 3, 8, 5, [2, 2, 2, 2]),
        (1, 6, 7, 5, 6, [0, 1, 2, 0]),
        (3, 2, 4, 1, 1, [1, 1, 1, 1]),
        (1, 3, 3, 2, 3, [2, 0, 1, 3]),
        (1, 8, 9, 11, 10, [1, 2, 0, 1]),
    ];
    for (i, &(n, c_in, c_out, h, w, p)) in cases.iter().enumerate() {
        let cfg = Conv2dConfig {
            padding: Padding {
                top: p[0],
                bottom: p[1],
                left: p[2],
                right: p[3],
            },
            ..Default::default()
        };
        let x = rand(&[n, c_in, h, w], 80 + i as u64);
        let wt = rand(&[c_out, c_in, 3, 3], 90 + i as u64);
        let b = rand(&[c_out], 100 + i as u64);
        let (oh, ow) = (h + p[0] + p[1] - 2, w + p[2] + p[3] - 2);
        let r = rand(&[n, c_out, oh, ow], 110 + i as u64);
        for (dtype, tolerance) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
            let (x, wt, b, r) = (
                x.to_dtype(dtype)?,
                wt.to_dtype(dtype)?,
                b.to_dtype(dtype)?,
                r.to_dtype(dtype)?,
            );
            // An f32 output rounded to the other side of ReLU's kink would move the gradient.
            let acts: &[Activation] = if dtype == DType::F64 {
                &[Activation::None, Activation::Relu]
            } else {
                &[Activation::None]
            };
            for &act in acts {
                for bias in [Some(&b), None] {
                    let top = Kernels::detected();
                    let (y0, g0) = conv_and_gradient(&x, &wt, bias, &r, &cfg, act, (ConvAlgorithm::Im2col, top))?;
                    let (y1, g1) = conv_and_gradient(&x, &wt, bias, &r, &cfg, act, (ConvAlgorithm::Winograd, top))?;
                    let what = format!("case {i} {dtype:?} {act:?} bias {}", bias.is_some());
                    assert_eq!(y0.dims(), y1.dims(), "{what}");
                    let (gy, gg) = (relative_gap(&y1, &y0)?, relative_gap(&g1, &g0)?);
                    assert!(gy <= tolerance, "{what}: output differs by {gy:e}");
                    assert!(gg <= tolerance, "{what}: input gradient differs by {gg:e}");
                    if dtype == DType::F32 {
                        if c_in >= 8 {
                            assert!(values(&y0) != values(&y1), "{what}: the Winograd path did not run");
                        }
                        for build in Kernels::available() {
                            let (yb, gb) =
                                conv_and_gradient(&x, &wt, bias, &r, &cfg, act, (ConvAlgorithm::Winograd, build))?;
                            assert!(values(&yb) == values(&y1), "{what} {build:?}: output differs");
                            assert!(values(&gb) == values(&g1), "{what} {build:?}: gradient differs");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Asserts that the batch `x`'s output and input gradient (against `r`) equal each image's
/// alone, bit for bit.
#[allow(clippy::too_many_arguments)]
fn each_image_alone(
    x: &Tensor,
    wt: &Tensor,
    b: &Tensor,
    r: &Tensor,
    cfg: &Conv2dConfig,
    act: Activation,
    run: (ConvAlgorithm, Kernels),
    what: &str,
) -> R<()> {
    let (y, g) = conv_and_gradient(x, wt, Some(b), r, cfg, act, run)?;
    for i in 0..x.dim(0)? {
        let one = |t: &Tensor| t.narrow(0, i, 1);
        let (yi, gi) = conv_and_gradient(&one(x)?, wt, Some(b), &one(r)?, cfg, act, run)?;
        assert!(values(&one(&y)?) == values(&yi), "{what}, image {i}: output differs");
        assert!(
            values(&one(&g)?) == values(&gi),
            "{what}, image {i}: input gradient differs"
        );
    }
    Ok(())
}

/// A batch's outputs and input gradients are each image's alone, bit for bit, on both paths of
/// the dense convolution (on small maps the images' columns share one gemm in the forward, and
/// Winograd's tiles of all images share its 16 gemms both ways).
#[test]
fn dense_batches_are_each_image_alone() -> R<()> {
    // (c_in, c_out, size, kernel, stride, padding, algorithm)
    let cases = [
        (24, 40, 7, 1, 1, 0, ConvAlgorithm::Auto),
        (16, 24, 14, 3, 2, 1, ConvAlgorithm::Auto),
        (32, 16, 9, 1, 2, 0, ConvAlgorithm::Auto),
        (16, 16, 7, 3, 1, 1, ConvAlgorithm::Im2col),
        (16, 16, 7, 3, 1, 1, ConvAlgorithm::Winograd),
        (64, 16, 5, 3, 1, 1, ConvAlgorithm::Im2col),
        (256, 16, 5, 3, 1, 1, ConvAlgorithm::Im2col),
    ];
    for (k, &(c_in, c_out, size, kernel, stride, pad, algorithm)) in cases.iter().enumerate() {
        let cfg = Conv2dConfig {
            padding: Padding::uniform(pad),
            stride,
            ..Default::default()
        };
        let n = 3;
        let x = rand(&[n, c_in, size, size], 120 + k as u64).to_dtype(DType::F32)?;
        let wt = (rand(&[c_out, c_in, kernel, kernel], 130 + k as u64) * 0.2)?.to_dtype(DType::F32)?;
        let b = rand(&[c_out], 140 + k as u64).to_dtype(DType::F32)?;
        let oh = (size + 2 * pad - kernel) / stride + 1;
        let r = rand(&[n, c_out, oh, oh], 150 + k as u64).to_dtype(DType::F32)?;
        for act in [Activation::None, Activation::Relu] {
            let run = (algorithm, Kernels::detected());
            each_image_alone(&x, &wt, &b, &r, &cfg, act, run, &format!("case {k} {act:?}"))?;
        }
    }
    Ok(())
}

/// Under the default algorithm choice an image's output and input gradient do not depend on
/// its batch either: not on the batch's size (a 7 × 7 map alone and in a batch of 3 or 32), nor
/// on whether its batch-mates have most input channels zero (a hard channel mask upstream, as
/// a channel search scores batches of sets), with zero channels of its own or none.
#[test]
fn the_default_algorithm_does_not_depend_on_the_batch() -> R<()> {
    // (c_in, c_out, size, images)
    let cases = [(16, 16, 7, 3), (32, 24, 7, 32), (16, 32, 14, 2), (64, 16, 5, 4)];
    for (k, &(c_in, c_out, size, n)) in cases.iter().enumerate() {
        let cfg = Conv2dConfig {
            padding: Padding::uniform(1),
            ..Default::default()
        };
        let mut x = rand(&[n, c_in, size, size], 200 + k as u64).to_dtype(DType::F32)?;
        // Every other image keeps an eighth of its channels (a different eighth each), as a
        // hard channel mask would; the others keep all.
        let keep: Vec<f32> = (0..n)
            .flat_map(|i| (0..c_in).map(move |c| if i % 2 == 0 || (c + i) % 8 == 0 { 1.0 } else { 0.0 }))
            .collect();
        x = x.broadcast_mul(&Tensor::from_vec(keep, (n, c_in, 1, 1), &Device::Cpu)?)?;
        let wt = (rand(&[c_out, c_in, 3, 3], 210 + k as u64) * 0.2)?.to_dtype(DType::F32)?;
        let b = rand(&[c_out], 220 + k as u64).to_dtype(DType::F32)?;
        let r = rand(&[n, c_out, size, size], 230 + k as u64).to_dtype(DType::F32)?;
        let run = (ConvAlgorithm::Auto, Kernels::detected());
        each_image_alone(
            &x,
            &wt,
            &b,
            &r,
            &cfg,
            Activation::Relu,
            run,
            &format!("case {k} of {n} images"),
        )?;
    }
    Ok(())
}

/// The input gradient of a convolution is the same, bit for bit, on the first backward through
/// its weight (the gemm reads `W` through strides) and on later ones (a row-major `Wᵀ` kept for
/// the weight), for 1×1, strided and dilated convolutions.
#[test]
fn kept_transposed_weights_give_the_same_gradient() -> R<()> {
    // (c_in, c_out, size, kernel, stride, dilation)
    let cases = [(40, 24, 7, 1, 1, 1), (16, 32, 12, 3, 2, 1), (8, 12, 9, 3, 1, 2)];
    for (k, &(c_in, c_out, size, kernel, stride, dilation)) in cases.iter().enumerate() {
        let cfg = Conv2dConfig {
            padding: Padding::uniform(1),
            stride,
            dilation,
            ..Default::default()
        };
        let x = rand(&[2, c_in, size, size], 160 + k as u64).to_dtype(DType::F32)?;
        let wt = rand(&[c_out, c_in, kernel, kernel], 170 + k as u64).to_dtype(DType::F32)?;
        let b = rand(&[c_out], 180 + k as u64).to_dtype(DType::F32)?;
        let y = conv2d_fused(&x, &wt, Some(&b), &cfg, Activation::Relu)?;
        let r = rand(y.dims(), 190 + k as u64).to_dtype(DType::F32)?;
        let run = (ConvAlgorithm::Im2col, Kernels::detected());
        let (_, first) = conv_and_gradient(&x, &wt, Some(&b), &r, &cfg, Activation::Relu, run)?;
        for again in 0..2 {
            let (_, later) = conv_and_gradient(&x, &wt, Some(&b), &r, &cfg, Activation::Relu, run)?;
            assert!(
                values(&later) == values(&first),
                "case {k}, backward {}: differs",
                again + 2
            );
        }
    }
    Ok(())
}

/// `join`'s two sides run under the calling thread's convolution algorithm and depthwise
/// layout, on whichever thread runs them, and leave every thread's own settings as they were.
#[test]
fn join_carries_the_forward_settings_to_the_other_thread() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    // The settings a side sees, and its thread.
    let seen = || (conv_algorithm(), depthwise_layout(), std::thread::current().id());
    let elsewhere = pool.install(|| {
        set_conv_algorithm(ConvAlgorithm::Winograd);
        set_depthwise_layout(DepthwiseLayout::Planes);
        let caller = std::thread::current().id();
        let mut elsewhere = 0;
        for _ in 0..10 {
            let (a, b) = join(
                || {
                    // Long enough for the other thread to take `b`.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    seen()
                },
                seen,
            );
            for (algorithm, layout, _) in [a, b] {
                assert_eq!(algorithm, ConvAlgorithm::Winograd);
                assert_eq!(layout, DepthwiseLayout::Planes);
            }
            elsewhere += usize::from(b.2 != caller);
        }
        assert_eq!(seen().0, ConvAlgorithm::Winograd);
        set_conv_algorithm(ConvAlgorithm::Auto);
        set_depthwise_layout(DepthwiseLayout::Auto);
        elsewhere
    });
    // The other thread's own settings are restored.
    let others = pool.broadcast(|_| seen());
    assert!(others
        .iter()
        .all(|&(a, l, _)| a == ConvAlgorithm::Auto && l == DepthwiseLayout::Auto));
    assert!(elsewhere > 0, "the second side never ran on the other thread");
}

/// `polling` runs its work while the pool's other threads poll for work: a parallel section's
/// second half still runs elsewhere, convolutions give the same values as without it, the
/// result comes back, and a panic in the work comes back as a panic instead of leaving the
/// polling threads waiting (the call would not return).
#[test]
fn polling_runs_parallel_sections_elsewhere_and_stops() -> R<()> {
    let (x, w) = (rand(&[2, 32, 15, 15], 1), rand(&[64, 32, 3, 3], 2));
    let conv = || conv2d(&x, &w, None, &Conv2dConfig::default());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let sleeping = values(&pool.install(conv)?);
    let (elsewhere, polled) = pool.install(|| {
        polling(|| -> candle_core::Result<_> {
            let caller = std::thread::current().id();
            let mut elsewhere = 0;
            for _ in 0..20 {
                let ((), other) = rayon::join(
                    // Long enough for a polling thread to take the other half.
                    || std::thread::sleep(std::time::Duration::from_millis(2)),
                    || std::thread::current().id(),
                );
                elsewhere += usize::from(other != caller);
            }
            Ok((elsewhere, values(&conv()?)))
        })
    })?;
    assert_eq!(polled, sleeping);
    assert!(elsewhere > 0, "no second half ran on the other thread");
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.install(|| polling(|| panic!("inside the work")))
    }));
    assert!(panicked.is_err());
    // The pool still works.
    assert_eq!(pool.install(|| polling(|| rayon::join(|| 1, || 2))), (1, 2));
    Ok(())
}

/// `side_by_side` returns its jobs' results in index order, runs them on both threads, each
/// under the caller's forward settings and gradient rule, and runs them on the calling thread
/// alone under a rule limited to a count (which cannot be shared between threads).
#[test]
fn side_by_side_runs_jobs_under_the_callers_settings() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let seen = |i: usize| {
        // Long enough for the other thread to take a job.
        std::thread::sleep(std::time::Duration::from_millis(5));
        (
            i,
            conv_algorithm(),
            depthwise_layout(),
            gradient_rule(),
            std::thread::current().id(),
        )
    };
    let (done, limited, caller) = pool.install(|| {
        set_conv_algorithm(ConvAlgorithm::Winograd);
        set_depthwise_layout(DepthwiseLayout::Planes);
        let done = {
            let _rule = set_gradient_rule(GradientRule::Guided);
            side_by_side(12, seen)
        };
        let limited = {
            let _rule = set_gradient_rule_for(GradientRule::Guided, 3);
            side_by_side(4, seen)
        };
        set_conv_algorithm(ConvAlgorithm::Auto);
        set_depthwise_layout(DepthwiseLayout::Auto);
        (done, limited, std::thread::current().id())
    });
    assert_eq!(
        done.iter().map(|d| d.0).collect::<Vec<_>>(),
        (0..12).collect::<Vec<_>>()
    );
    for &(_, algorithm, layout, rule, _) in &done {
        assert_eq!(
            (algorithm, layout, rule),
            (ConvAlgorithm::Winograd, DepthwiseLayout::Planes, GradientRule::Guided)
        );
    }
    assert!(done.iter().any(|d| d.4 != caller), "no job ran on the other thread");
    assert!(limited.iter().all(|d| d.4 == caller && d.3 == GradientRule::Guided));
    // The other thread's own settings are restored.
    let others = pool.broadcast(|_| (conv_algorithm(), depthwise_layout(), gradient_rule()));
    assert!(others
        .iter()
        .all(|&s| s == (ConvAlgorithm::Auto, DepthwiseLayout::Auto, GradientRule::Standard)));
}

/// An image's output must not depend on its batch where `gemm` would take another path for it
/// alone: a classifier's single row (its matrix-vector path) and a convolution whose compacted
/// input keeps one or two channels (its path for depths of at most 2), beside images that keep
/// more.
#[test]
fn single_rows_and_shallow_products_do_not_depend_on_the_batch() -> R<()> {
    // The classifier: one row alone, and the same row among three.
    let x = rand(&[3, 1280], 1).to_dtype(DType::F32)?;
    let w = rand(&[1280, 1000], 2).to_dtype(DType::F32)?;
    let b = rand(&[1000], 3).to_dtype(DType::F32)?;
    for i in 0..3 {
        let alone = linear(&x.narrow(0, i, 1)?, &w, Some(&b))?;
        let among = linear(&x, &w, Some(&b))?.narrow(0, i, 1)?;
        assert_eq!(values(&alone), values(&among), "classifier row {i}");
    }
    // A 1×1 convolution over 112 channels of which an image keeps 1 or 2 (compacted to that
    // depth) beside one that keeps 25.
    let w = rand(&[672, 112, 1, 1], 4).to_dtype(DType::F32)?;
    let b = rand(&[672], 5).to_dtype(DType::F32)?;
    let x = rand(&[1, 112, 14, 14], 6).to_dtype(DType::F32)?;
    let keep = |live: &[usize]| -> R<Tensor> {
        let mut m = vec![0f32; 112];
        live.iter().for_each(|&c| m[c] = 1.0);
        Ok(x.broadcast_mul(&Tensor::new(m, &Device::Cpu)?.reshape((1, 112, 1, 1))?)?)
    };
    let wide = keep(&(0..25).map(|i| i * 4).collect::<Vec<_>>())?;
    for live in [vec![70], vec![96, 70], vec![3, 5]] {
        let img = keep(&live)?;
        let cfg = Conv2dConfig::default();
        let alone = conv2d_fused(&img, &w, Some(&b), &cfg, Activation::Relu)?;
        let among =
            conv2d_fused(&Tensor::cat(&[&wide, &img], 0)?, &w, Some(&b), &cfg, Activation::Relu)?.narrow(0, 1, 1)?;
        assert_eq!(values(&alone), values(&among), "channels {live:?}");
    }
    Ok(())
}
