//! Times [`max_pool2d`] forward and backward at ResNet's stem pool (3×3, stride 2, padding 1,
//! on a 1 × 64 × 112 × 112 input), with the CLI's thread settings. The backward figure is the
//! whole `backward()` call (candle's gradient bookkeeping included, and the page faults of its
//! fresh buffers, which the CLI avoids by keeping freed memory), less the forward of the
//! product and sum that it starts from.
//!
//! ```text
//! cargo run --release -p extremal-ops --example max_pool_time
//! ```

use candle_core::{Device, Tensor, Var};
use extremal_ops::{max_pool2d, Pool2d};

fn main() -> candle_core::Result<()> {
    // SAFETY: called first, before any other thread exists.
    unsafe { extremal_ops::one_elementwise_thread() };
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 64, 112, 112), &Device::Cpu)?)?;
    let cfg = Pool2d::new(3, 2).with_padding(1);
    let g = Tensor::randn(0f32, 1.0, (1, 64, 56, 56), &Device::Cpu)?;
    let passes = 20;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let mut y = max_pool2d(x.as_tensor(), &cfg)?;
        for _ in 1..passes {
            y = max_pool2d(x.as_tensor(), &cfg)?;
        }
        let forward = t.elapsed().as_secs_f64() / passes as f64;
        let t = std::time::Instant::now();
        for _ in 0..passes {
            (&y * &g)?.sum_all()?.backward()?;
        }
        let with_backward = t.elapsed().as_secs_f64() / passes as f64;
        let t = std::time::Instant::now();
        for _ in 0..passes {
            (&y * &g)?.sum_all()?;
        }
        let product = t.elapsed().as_secs_f64() / passes as f64;
        println!(
            "max_pool2d 3x3/2 on 1x64x112x112: forward {:.3} ms, backward {:.3} ms",
            forward * 1e3,
            (with_backward - product) * 1e3
        );
    }
    Ok(())
}
