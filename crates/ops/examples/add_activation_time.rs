//! Times a residual block's sum and ReLU on ResNet-50's `layer1` output at batch 3
//! (3 × 256 × 56 × 56), forward and backward, as [`add_activation`] (one pass each way) and as
//! `relu(a + b)` (two), with the CLI's thread settings. Both include the same product, sum and
//! `backward()` bookkeeping.
//!
//! ```text
//! cargo run --release -p extremal-ops --example add_activation_time
//! ```

use candle_core::{Device, Tensor, Var};
use extremal_ops::{add_activation, relu, Activation};

fn main() -> candle_core::Result<()> {
    // SAFETY: called first, before any other thread exists.
    unsafe { extremal_ops::one_elementwise_thread() };
    extremal_ops::on_thread_pool(|| -> candle_core::Result<()> {
        let shape = (3, 256, 56, 56);
        let a = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?)?;
        let g = Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?;
        let passes = 30;
        for _ in 0..4 {
            let t = std::time::Instant::now();
            for _ in 0..passes {
                let y =
                    add_activation(a.as_tensor(), b.as_tensor(), Activation::Relu).map_err(candle_core::Error::wrap)?;
                (&y * &g)?.sum_all()?.backward()?;
            }
            let fused = t.elapsed().as_secs_f64() / passes as f64;
            let t = std::time::Instant::now();
            for _ in 0..passes {
                let y = relu(&(a.as_tensor() + b.as_tensor())?).map_err(candle_core::Error::wrap)?;
                (&y * &g)?.sum_all()?.backward()?;
            }
            let plain = t.elapsed().as_secs_f64() / passes as f64;
            println!(
                "forward + backward: add_activation {:.2} ms, relu(a + b) {:.2} ms",
                fused * 1e3,
                plain * 1e3
            );
        }
        Ok(())
    })
}
