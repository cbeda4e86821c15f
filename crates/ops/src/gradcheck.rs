//! Finite-difference gradient checks (use f64).

use candle_core::{Tensor, Var};

use crate::random::SeededRng;
use crate::Result;

/// The gradient of the scalar `f(x)` with respect to `x` by candle's backward pass.
///
/// # Shapes
/// - `x`: any; returns its shape.
pub fn analytic_gradient(f: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor) -> Result<Tensor> {
    let v = Var::from_tensor(x)?;
    let y = f(v.as_tensor())?.sum_all()?;
    let grads = y.backward()?;
    match grads.get(v.as_tensor()) {
        Some(g) => Ok(g.clone()),
        None => Ok(x.zeros_like()?),
    }
}

/// The gradient of the scalar `f(x)` by central differences, one coordinate at a time
/// (`2·numel` evaluations: for small inputs).
pub fn numeric_gradient(f: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor, eps: f64) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let base = x.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    let eval = |v: &[f64]| -> Result<f64> {
        let t = Tensor::from_slice(v, dims.as_slice(), x.device())?.to_dtype(x.dtype())?;
        Ok(f(&t)?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?)
    };
    let mut g = vec![0f64; base.len()];
    let mut v = base.clone();
    for i in 0..base.len() {
        v[i] = base[i] + eps;
        let plus = eval(&v)?;
        v[i] = base[i] - eps;
        let minus = eval(&v)?;
        v[i] = base[i];
        g[i] = (plus - minus) / (2.0 * eps);
    }
    Ok(Tensor::from_vec(g, dims.as_slice(), x.device())?.to_dtype(x.dtype())?)
}

/// The largest absolute difference between the analytic and numeric gradients, relative to
/// the largest numeric value (at least 1).
pub fn max_relative_error(f: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor, eps: f64) -> Result<f64> {
    let a = analytic_gradient(f, x)?;
    let n = numeric_gradient(f, x, eps)?;
    let diff = (a - &n)?
        .abs()?
        .max_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    let scale = n
        .abs()?
        .max_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?
        .max(1.0);
    Ok(diff / scale)
}

/// A directional check for large inputs: for a random direction `v`, returns
/// `(⟨∇f(x), v⟩, (f(x + εv) − f(x − εv)) / 2ε)`; the two agree when the gradient is right.
pub fn directional(f: &dyn Fn(&Tensor) -> Result<Tensor>, x: &Tensor, eps: f64, seed: u64) -> Result<(f64, f64)> {
    let g = analytic_gradient(f, x)?;
    let v = SeededRng::new(seed)
        .normal_tensor(x.dims(), 1.0, x.device())?
        .to_dtype(x.dtype())?;
    let analytic = (g * &v)?
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    let step = (&v * eps)?;
    let plus = f(&(x + &step)?)?
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    let minus = f(&(x - &step)?)?
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    Ok((analytic, (plus - minus) / (2.0 * eps)))
}
