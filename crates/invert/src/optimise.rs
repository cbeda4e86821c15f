//! The one optimisation loop over an image parameterisation that inversion and feature
//! visualization share.

use candle_core::{DType, Tensor};
use extremal_ops::{set_gradient_rule_for, GradientRule, Optimiser};

use crate::param::ImageParam;
use crate::{Error, Result};

/// How the loop runs: steps, and how many first steps pass redirected gradients through the
/// last rectifier before the site (the learning rate per step is the optimiser's own, e.g.
/// [`extremal_ops::Scheduled`]).
pub(crate) struct Schedule {
    pub iterations: usize,
    pub redirect_steps: usize,
}

/// One step's loss: from the step and the rendered images, the total to differentiate and
/// each image's value to report.
pub(crate) type StepLoss<'a> = dyn FnMut(usize, &Tensor) -> Result<(Tensor, Vec<f64>)> + 'a;

/// Minimises `loss(t, image)` over the parameters of `param`: each step renders the images,
/// asks `loss` for the total to differentiate and the per-image values to report, steps the
/// optimiser, and calls `progress(t + 1, values)`. Returns the values of every step.
pub(crate) fn optimise_image(
    param: &ImageParam,
    schedule: &Schedule,
    optimiser: &mut dyn Optimiser,
    loss: &mut StepLoss,
    progress: &mut dyn FnMut(usize, &[f64]),
) -> Result<Vec<Vec<f64>>> {
    let mut history = Vec::with_capacity(schedule.iterations);
    for t in 0..schedule.iterations {
        let image = param.image()?;
        let (total, values) = loss(t, &image)?;
        let value = total.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            return Err(Error::Invalid(format!(
                "the optimisation diverged (objective {value}) at step {t}; lower the learning rate (now {})",
                optimiser.learning_rate()
            )));
        }
        let grads = {
            let _rule = (t < schedule.redirect_steps).then(|| set_gradient_rule_for(GradientRule::Redirected, 1));
            total.backward()?
        };
        let g = grads.get(param.var()).ok_or_else(|| {
            Error::Invalid("no gradient reached the image: does the site depend on the input?".into())
        })?;
        optimiser.step(param.var(), g)?;
        progress(t + 1, &values);
        history.push(values);
    }
    Ok(history)
}
