use candle_core::Tensor;

use crate::Result;

/// ReLU whose gradient is 0 where the input is exactly 0, as in PyTorch (candle's is 1).
///
/// # Shapes
/// - `x`: any shape; the output has the same shape.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(x.relu()?);
    }
    // The mask is a constant for the autograd graph: the gradient is exactly 1[x > 0].
    let mask = x.gt(0.0)?.to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

/// ReLU6, `min(max(x, 0), 6)`, with PyTorch's gradient: 1 on the open interval (0, 6), else 0.
///
/// # Shapes
/// - `x`: any shape; the output has the same shape.
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(x.clamp(0.0, 6.0)?);
    }
    let inside = x.gt(0.0)?.mul(&x.lt(6.0)?)?.to_dtype(x.dtype())?;
    let above = (x.ge(6.0)?.to_dtype(x.dtype())? * 6.0)?;
    Ok(x.mul(&inside)?.add(&above)?)
}
