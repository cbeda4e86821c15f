//! Times the dense 3×3 stride-1 convolution (constant weights, bias and ReLU fused, as a
//! folded ResNet runs it) with both algorithms ([`ConvAlgorithm::Im2col`] and
//! [`ConvAlgorithm::Winograd`]), alternating, with the CLI's thread settings: the forward,
//! and the forward and input gradient together, at ResNet's and VGG-16's shapes (batch 1 and
//! 3) and a channel search's suffix batch (32 at 14 × 14 and 7 × 7). Prints the best time of
//! each, what `Auto` takes, and the largest difference of the outputs and of the input
//! gradients relative to their largest magnitude (the gradients' can be far larger where an
//! output lies within rounding of ReLU's kink and falls on its other side).
//!
//! ```text
//! cargo run --release -p extremal-ops --example conv_time
//! ```

use candle_core::{Device, Tensor, Var};
use extremal_ops::{conv2d_fused, set_conv_algorithm, Activation, Conv2dConfig, ConvAlgorithm, Padding};

fn main() -> candle_core::Result<()> {
    // SAFETY: called first, before any other thread exists.
    unsafe { extremal_ops::one_elementwise_thread() };
    // (batch, channels, size)
    let shapes = [
        (1, 64, 56),
        (1, 128, 28),
        (1, 256, 14),
        (1, 512, 7),
        (3, 64, 56),
        (3, 128, 28),
        (3, 256, 14),
        (3, 512, 7),
        (32, 256, 14),
        (32, 512, 7),
        (1, 64, 224),
        (1, 128, 112),
        (1, 256, 56),
        (1, 512, 28),
    ];
    // `conv_time N C SIZE` times that shape alone.
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let shapes: Vec<(usize, usize, usize)> = match args[..] {
        [n, c, size] => vec![(n, c, size)],
        _ => shapes.to_vec(),
    };
    let algorithms = [ConvAlgorithm::Im2col, ConvAlgorithm::Winograd];
    extremal_ops::on_thread_pool(|| {
        for &(n, c, size) in &shapes {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, c, size, size), &Device::Cpu)?)?;
            let scale = (2.0 / (9 * c) as f64).sqrt() as f32;
            let w = (Tensor::randn(0f32, 1.0, (c, c, 3, 3), &Device::Cpu)? * scale as f64)?;
            let b = Tensor::randn(0f32, 0.1, c, &Device::Cpu)?;
            let r = Tensor::randn(0f32, 1.0, (n, c, size, size), &Device::Cpu)?;
            let cfg = Conv2dConfig {
                padding: Padding::uniform(1),
                ..Default::default()
            };
            let passes = (2e9 / (2.0 * (n * c * c * 9 * size * size) as f64)).clamp(2.0, 50.0) as usize;
            let mut forward = [f64::INFINITY; 2];
            let mut both = [f64::INFINITY; 2];
            let mut results = Vec::new();
            for round in 0..3 {
                for (a, &algorithm) in algorithms.iter().enumerate() {
                    set_conv_algorithm(algorithm);
                    let t = std::time::Instant::now();
                    for _ in 0..passes {
                        conv2d_fused(x.as_tensor(), &w, Some(&b), &cfg, Activation::Relu)?;
                    }
                    forward[a] = forward[a].min(t.elapsed().as_secs_f64() / passes as f64);
                    let t = std::time::Instant::now();
                    let mut last = None;
                    for _ in 0..passes {
                        let y = conv2d_fused(x.as_tensor(), &w, Some(&b), &cfg, Activation::Relu)?;
                        let grads = (&y * &r)?.sum_all()?.backward()?;
                        last = Some((y, grads.get(x.as_tensor()).expect("input gradient").clone()));
                    }
                    both[a] = both[a].min(t.elapsed().as_secs_f64() / passes as f64);
                    if round == 0 {
                        results.push(last.expect("a pass"));
                    }
                }
            }
            set_conv_algorithm(ConvAlgorithm::Auto);
            // `Auto`'s rule (16+ channels, 16+ tiles of 2 × 2 outputs per image).
            let auto = if size.div_ceil(2).pow(2) >= 16 {
                "winograd"
            } else {
                "im2col"
            };
            let gap = |a: &Tensor, b: &Tensor| -> candle_core::Result<f32> {
                let top = a.abs()?.max_all()?.to_scalar::<f32>()?;
                Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / top)
            };
            let (y_gap, g_gap) = (gap(&results[0].0, &results[1].0)?, gap(&results[0].1, &results[1].1)?);
            println!(
                "{n:>3} x {c:>4} x {size:>3}^2: forward im2col {:>8.3} ms, winograd {:>8.3} ms ({:.2}x); \
                 with input gradient {:>8.3} / {:>8.3} ms ({:.2}x); gaps {y_gap:.1e} {g_gap:.1e} (auto: {auto})",
                forward[0] * 1e3,
                forward[1] * 1e3,
                forward[1] / forward[0],
                both[0] * 1e3,
                both[1] * 1e3,
                both[1] / both[0],
            );
        }
        Ok(())
    })
}
