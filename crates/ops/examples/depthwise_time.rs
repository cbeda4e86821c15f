//! Times the depthwise convolution's forward (constant weights, bias and ReLU6 fused, as a
//! folded EfficientNet-Lite0 runs it) at Lite0's depthwise shapes, with the CLI's thread
//! settings: batch 32 at the 14 × 14 and 7 × 7 stages (a channel search's suffix batch), and
//! batch 1 at every stage. Each shape runs in both layouts ([`DepthwiseLayout`]), alternating,
//! and prints the best time of each and what `Auto` picks.
//!
//! ```text
//! cargo run --release -p extremal-ops --example depthwise_time
//! ```

use candle_core::{Device, Tensor};
use extremal_ops::{conv2d_fused, set_depthwise_layout, Activation, Conv2dConfig, DepthwiseLayout, Padding};

fn main() -> candle_core::Result<()> {
    // SAFETY: called first, before any other thread exists.
    unsafe { extremal_ops::one_elementwise_thread() };
    // (batch, channels, size, kernel, stride)
    let shapes = [
        (32, 480, 14, 5, 1),
        (32, 672, 14, 5, 2),
        (32, 1152, 7, 5, 1),
        (32, 1152, 7, 3, 1),
        (3, 480, 14, 5, 1),
        (3, 480, 14, 3, 1),
        (3, 240, 28, 5, 1),
        (8, 480, 14, 5, 1),
        (8, 240, 28, 5, 1),
        (1, 32, 112, 3, 1),
        (1, 96, 112, 3, 2),
        (1, 144, 56, 3, 1),
        (1, 240, 28, 5, 1),
        (1, 480, 14, 3, 1),
        (1, 1152, 7, 5, 1),
    ];
    extremal_ops::on_thread_pool(|| {
        for &(n, c, size, k, stride) in &shapes {
            let x = Tensor::randn(0f32, 1.0, (n, c, size, size), &Device::Cpu)?;
            let w = Tensor::randn(0f32, 1.0, (c, 1, k, k), &Device::Cpu)?;
            let b_ = Tensor::randn(0f32, 1.0, c, &Device::Cpu)?;
            let p = k / 2;
            let cfg = Conv2dConfig {
                stride,
                groups: c,
                padding: Padding {
                    top: p,
                    bottom: p,
                    left: p,
                    right: p,
                },
                dilation: 1,
            };
            let passes = (200 / n).max(5);
            let mut best = [f64::INFINITY; 2];
            let layouts = [DepthwiseLayout::Planes, DepthwiseLayout::Interleaved];
            for _ in 0..5 {
                for (b, &layout) in best.iter_mut().zip(&layouts) {
                    set_depthwise_layout(layout);
                    let t = std::time::Instant::now();
                    for _ in 0..passes {
                        conv2d_fused(&x, &w, Some(&b_), &cfg, Activation::Relu6)?;
                    }
                    *b = b.min(t.elapsed().as_secs_f64() / passes as f64);
                }
            }
            set_depthwise_layout(DepthwiseLayout::Auto);
            let out = size.div_ceil(stride).pow(2);
            let fits = n * c * size * size <= 1 << 20;
            let auto = if out <= 28 * 28 && (stride > 1 || out <= 64 || fits) && n * c >= 16 {
                "interleaved"
            } else {
                "planes"
            };
            println!(
                "{n:>3} x {c:>4} x {size:>3}^2, {k}x{k}/{stride}: planes {:>7.3} ms, interleaved {:>7.3} ms (auto: {auto})",
                best[0] * 1e3,
                best[1] * 1e3
            );
        }
        Ok(())
    })
}
