//! `extremal bench`: seconds per forward pass and per forward + backward-to-input pass.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use extremal_hook::Network;
use serde_json::json;

use crate::{device, out, ModelArgs};

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed passes of each kind (after one warm-up pass of each).
    #[arg(long, default_value_t = 5)]
    passes: usize,
    /// Input height and width (default: the model's input size).
    #[arg(long)]
    size: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The median of the timings (in seconds) of `passes` runs of `f`, after one warm-up run.
fn time(passes: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(passes);
    for _ in 0..passes {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    if args.batch == 0 || args.passes == 0 {
        bail!("--batch and --passes must be at least 1");
    }
    let dev = device(&args.model.device)?;
    // The time does not depend on the weights' values: without --weights, random weights of
    // the right shapes are used and nothing is downloaded.
    let model = args.model.open(true)?;
    let size = args.size.unwrap_or(model.preprocess().size);
    let values = (args.batch as u128) * 3 * (size as u128) * (size as u128);
    if size == 0 || values > 1 << 28 {
        bail!(
            "--batch {} at --size {size} is {values} input values, over the limit of {}; use a smaller batch or size",
            args.batch,
            1u64 << 28
        );
    }
    let x = Tensor::randn(0f32, 1.0, (args.batch, 3, size, size), &dev)?;
    let forward_s = time(args.passes, || {
        let y = model.forward(&x)?;
        y.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })?;
    let xv = Var::from_tensor(&x)?;
    let forward_backward_s = time(args.passes, || {
        let y = model.forward(xv.as_tensor())?;
        // The gradient of each image's class-0 logit, as an attribution method takes it.
        let grads = y.narrow(1, 0, 1)?.sum_all()?.backward()?;
        let g = grads.get(xv.as_tensor()).expect("the input is a variable");
        g.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })?;
    // The build of the hand-written kernels this CPU runs (gemm chooses its own the same way).
    let kernels = format!("{:?}", extremal_ops::Kernels::detected()).to_lowercase();
    let report = json!({
        "model": model.name(),
        "batch": args.batch,
        "size": size,
        "threads": candle_core::utils::get_num_threads(),
        "kernels": kernels,
        "forward_s": forward_s,
        "forward_backward_s": forward_backward_s,
    });
    if args.json {
        out(&format!("{report}\n"));
    } else {
        out(&format!(
            "{} batch {} at {size}x{size}: forward {:.4} s, forward+backward to the input {:.4} s (median of {} passes; {kernels} kernels)\n",
            model.name(),
            args.batch,
            forward_s,
            forward_backward_s,
            args.passes
        ));
    }
    Ok(())
}
