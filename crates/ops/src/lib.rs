//! Differentiable kernels that candle lacks or gets wrong (its convolution, pooling and
//! activation backward passes are slow or missing on the CPU; see `docs/architecture.md`).
//!
//! Every function here has a forward and a backward that are correct for f32 and f64 and for
//! non-square, odd-sized inputs; each is checked against finite differences in `tests/`.
//!
//! - [`max_pool2d`]: any kernel, stride, padding and ceil mode, with an argmax backward
//!   (candle's errors or is silently scaled).
//! - [`conv2d`] and [`conv2d_fused`] (bias and ReLU/ReLU6 in the same kernel): explicit
//!   (possibly asymmetric) padding, stride, dilation and groups, any input size. On the CPU with
//!   constant weights: im2col + gemm forward, gemm + col2im input gradient and no weight
//!   gradient, or for 3×3 stride-1 convolutions Winograd's F(2×2, 3×3) both ways (16
//!   multiplies per 2×2 outputs instead of 36; [`ConvAlgorithm`]); what these derive from the
//!   weights (Winograd's transformed filters, the transposed weights of the gradient's gemm)
//!   is computed once per weight tensor and kept; depthwise convolutions use a
//!   direct kernel, built for AVX-512, AVX2 + FMA and
//!   portable code and chosen at run time ([`Kernels`]; the same values with each), its
//!   forward one plane at a time or, for strided and small planes, sixteen planes interleaved
//!   ([`DepthwiseLayout`]; the same values with each).
//! - [`same_padding`]: TensorFlow's "SAME" padding.
//! - [`resize_bilinear`], [`adaptive_avg_pool2d`], [`avg_pool2d`] and [`gaussian_blur`]
//!   (zero, reflect and replicate borders): separable matrix products, differentiable.
//! - [`relu`] and [`relu6`]: PyTorch's gradient at the kinks (0 at 0); [`GradientRule`]
//!   swaps their backward for guided backprop, deconvnet or redirected gradients.
//! - [`irfft2`]: the inverse real 2-D FFT (`torch.fft.irfftn`, orthonormal), for Fourier
//!   image parameterisations.
//! - [`linear`]: a fully connected layer that skips the weight gradient of constant weights.
//! - [`excite`]: excitation backprop's backward rules, which every linear kernel here follows
//!   while [`set_excitation_backprop`] is on.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use extremal_ops::{max_pool2d, Pool2d};
//!
//! let x = Var::from_tensor(&Tensor::arange(0f32, 16., &Device::Cpu)?.reshape((1, 1, 4, 4))?)?;
//! let y = max_pool2d(&x, &Pool2d::new(2, 2))?;
//! assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![5., 7., 13., 15.]);
//! let grads = y.sum_all()?.backward()?;
//! let g = grads.get(&x).unwrap().flatten_all()?.to_vec1::<f32>()?;
//! assert_eq!(g.iter().sum::<f32>(), 4.0); // one per window, not 1/k² as in candle
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod act;
mod conv;
mod dense;
mod depthwise;
pub mod excite;
mod fft;
pub mod gradcheck;
mod linear;
pub mod optim;
mod pool;
pub mod random;
mod resize;
mod separable;
mod simd;
mod threads;
mod weights;
mod winograd;

pub use act::{
    add_activation, gradient_rule, relu, relu6, set_gradient_rule, set_gradient_rule_for, sigmoid, Activation,
    GradientRule, RuleGuard,
};
pub use conv::{conv2d, conv2d_excitation, conv2d_fused, conv2d_fused_with, same_padding, Conv2dConfig, Padding};
pub use depthwise::{depthwise_layout, set_depthwise_layout, DepthwiseLayout};
pub use excite::{
    excitation_backprop, excite, excite_identity, excite_sum, last_classifier, set_excitation_backprop, Classifier,
    ExcitationGuard,
};
pub use fft::irfft2;
pub use linear::linear;
pub use optim::{Adam, LearningRate, Optimiser, Scheduled, Sgd, UnitRms};
pub use pool::{adaptive_avg_pool2d, max_pool2d, max_pool2d_primitive, Pool2d};
pub use resize::{interpolation_matrix, resize_bilinear};
pub use separable::{avg_pool2d, gaussian_blur, gaussian_kernel, Border};
pub use simd::{has_avx2, Kernels};
pub use threads::{join, on_thread_pool, one_elementwise_thread, polling, side_by_side, IDLE_BEFORE_NAPS};
pub use winograd::{conv_algorithm, set_conv_algorithm, ConvAlgorithm};

/// Errors of the kernels in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from candle itself.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A shape that the kernel cannot work with, with what was expected.
    #[error("{op}: {message}")]
    Shape {
        /// The operation that refused the input.
        op: &'static str,
        /// What was wrong.
        message: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A vector of `n` values whose contents are unspecified, for outputs whose every element the
/// kernel writes before anything reads it (zeroing megabytes that are overwritten at once costs
/// as much as a small convolution). candle's `alloc_uninit` does the same.
#[allow(clippy::uninit_vec)]
pub(crate) fn output_vec<T: candle_core::WithDType>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: T is one of candle's plain numeric types (Copy, no Drop, every bit pattern a
    // valid value), and callers write all n elements before reading any.
    unsafe { v.set_len(n) };
    v
}

/// The values of a contiguous CPU storage (what a custom op's `cpu_fwd` receives), or an
/// error naming `op`.
pub fn contiguous_slice<'a, T: candle_core::WithDType>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<T>()?[a..b]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// Calls `f` with the values of a contiguous CPU tensor, borrowed (no copy), or an error
/// naming `op`.
pub fn with_tensor_slice<T: candle_core::WithDType, R>(
    t: &candle_core::Tensor,
    op: &str,
    f: impl FnOnce(&[T]) -> R,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(ref s) = *storage else {
        candle_core::bail!("{op}: the tensor must be on the CPU")
    };
    Ok(f(contiguous_slice(s, layout, op)?))
}

pub(crate) fn shape_err<T>(op: &'static str, message: impl Into<String>) -> Result<T> {
    Err(Error::Shape {
        op,
        message: message.into(),
    })
}

impl From<Error> for candle_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Candle(e) => e,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}
