use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::Result;

/// An activation fused into a kernel (see [`conv2d_fused`](crate::conv2d_fused)), with
/// PyTorch's gradient at the kinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// The identity.
    #[default]
    None,
    /// `max(x, 0)`; gradient 1 where `x > 0`.
    Relu,
    /// `min(max(x, 0), 6)`; gradient 1 where `0 < x < 6`.
    Relu6,
}

impl Activation {
    /// Applies the activation with candle's tensor ops (any device), PyTorch's gradient.
    ///
    /// # Shapes
    /// - `x`: any shape; the output has the same shape.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::None => Ok(x.clone()),
            Activation::Relu => relu(x),
            Activation::Relu6 => relu6(x),
        }
    }
}

/// `1 / (1 + e^{−x})` with candle's differentiable ops (candle-core has no sigmoid).
///
/// # Shapes
/// - `x`: any shape; the output has the same shape.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}

/// Chunk length of the element-wise loops run in parallel.
const CHUNK: usize = 1 << 14;

/// Applies `act` in place, on this thread.
#[inline]
pub(crate) fn activate_serial<T: WithDType>(y: &mut [T], act: Activation) {
    let (zero, six) = (T::zero(), T::from_f64(6.0));
    match act {
        Activation::None => {}
        Activation::Relu => y.iter_mut().for_each(|v| *v = if *v < zero { zero } else { *v }),
        Activation::Relu6 => y.iter_mut().for_each(|v| {
            let x = if *v < zero { zero } else { *v };
            *v = if x > six { six } else { x };
        }),
    }
}

/// How the backward pass treats ReLU and ReLU6 (fused or not): the true derivative, or one of
/// the modified rules of gradient-based attribution and feature visualisation. The rule is a
/// per-thread setting read when the backward pass reaches an activation; set it for a scope
/// with [`set_gradient_rule`]. It applies to the CPU kernels; on other devices only
/// [`GradientRule::Standard`] exists and the others are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GradientRule {
    /// The derivative (PyTorch's, 0 at the kinks).
    #[default]
    Standard,
    /// Guided backpropagation (Springenberg et al. 2015): the derivative, and only positive
    /// gradients pass.
    Guided,
    /// Deconvnet (Zeiler & Fergus 2014): only positive gradients pass, whatever the input.
    Deconvnet,
    /// Redirected (Lucid's `redirected_relu_grad`): the derivative, and where a unit is dead
    /// (ReLU at 0, ReLU6 at 0 or 6) the gradient still passes if a descent step would bring it
    /// back to life. Lets an image optimisation escape dead units.
    Redirected,
}

thread_local! {
    /// The rule, and how many more activation gradients it applies to (`None`: all).
    static RULE: std::cell::Cell<(GradientRule, Option<usize>)> =
        const { std::cell::Cell::new((GradientRule::Standard, None)) };
}

/// The gradient rule in force on this thread.
pub fn gradient_rule() -> GradientRule {
    RULE.with(|r| match r.get() {
        (_, Some(0)) => GradientRule::Standard,
        (rule, _) => rule,
    })
}

/// This thread's rule and how many more activation gradients it applies to (`None`: all).
pub(crate) fn gradient_rule_state() -> (GradientRule, Option<usize>) {
    RULE.with(|r| r.get())
}

/// The rule for the activation gradient being built now; counts it against a limited rule.
pub(crate) fn take_gradient_rule() -> GradientRule {
    RULE.with(|r| match r.get() {
        (_, Some(0)) => GradientRule::Standard,
        (rule, Some(n)) => {
            r.set((rule, Some(n - 1)));
            rule
        }
        (rule, None) => rule,
    })
}

/// Sets the gradient rule of this thread until the returned guard is dropped.
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use extremal_ops::{relu, set_gradient_rule, GradientRule};
/// let x = Var::new(&[-1f32, 2.0, 3.0], &Device::Cpu)?;
/// let y = (relu(&x)? * Tensor::new(&[1f32, -1.0, 1.0], &Device::Cpu)?)?.sum_all()?;
/// let guided = {
///     let _rule = set_gradient_rule(GradientRule::Guided);
///     y.backward()?.get(&x).unwrap().to_vec1::<f32>()?
/// };
/// assert_eq!(guided, vec![0.0, 0.0, 1.0]);
/// assert_eq!(y.backward()?.get(&x).unwrap().to_vec1::<f32>()?, vec![0.0, -1.0, 1.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn set_gradient_rule(rule: GradientRule) -> RuleGuard {
    RuleGuard(RULE.with(|r| r.replace((rule, None))))
}

/// Like [`set_gradient_rule`], for the next `count` activations that a backward pass reaches
/// only (then the standard derivative). A backward pass reaches activations from the output
/// down, so `count = 1` modifies only the last activation of the forward pass, e.g. the one
/// that produces a site's activation.
pub fn set_gradient_rule_for(rule: GradientRule, count: usize) -> RuleGuard {
    RuleGuard(RULE.with(|r| r.replace((rule, Some(count)))))
}

/// Restores the previous gradient rule when dropped (see [`set_gradient_rule`]).
#[derive(Debug)]
pub struct RuleGuard((GradientRule, Option<usize>));

impl Drop for RuleGuard {
    fn drop(&mut self) {
        RULE.with(|r| r.set(self.0));
    }
}

/// `out = grad ⊙ act′(y)` for one row, on this thread, under `rule`.
#[inline(always)]
pub(crate) fn mask_row<T: WithDType>(grad: &[T], y: &[T], act: Activation, rule: GradientRule, out: &mut [T]) {
    let (zero, six) = (T::zero(), T::from_f64(6.0));
    let top = if act == Activation::Relu6 {
        six
    } else {
        T::from_f64(f64::INFINITY)
    };
    match (act, rule) {
        (Activation::None, _) => out.copy_from_slice(grad),
        (Activation::Relu, GradientRule::Standard) => {
            for ((o, &g), &y) in out.iter_mut().zip(grad).zip(y) {
                *o = if y > zero { g } else { zero };
            }
        }
        (Activation::Relu6, GradientRule::Standard) => {
            for ((o, &g), &y) in out.iter_mut().zip(grad).zip(y) {
                // `&`, not `&&`: no branch, so the loop vectorises (a select per lane).
                *o = if (y > zero) & (y < six) { g } else { zero };
            }
        }
        (_, GradientRule::Guided) => {
            for ((o, &g), &y) in out.iter_mut().zip(grad).zip(y) {
                *o = if (y > zero) & (y < top) & (g > zero) { g } else { zero };
            }
        }
        (_, GradientRule::Deconvnet) => {
            for (o, &g) in out.iter_mut().zip(grad) {
                *o = if g > zero { g } else { zero };
            }
        }
        (_, GradientRule::Redirected) => {
            for ((o, &g), &y) in out.iter_mut().zip(grad).zip(y) {
                let live = (y > zero) & (y < top);
                let revive = ((y <= zero) & (g < zero)) | ((y >= top) & (g > zero));
                *o = if live | revive { g } else { zero };
            }
        }
    }
}

/// `out = grad ⊙ act′(y)`, in parallel, under `rule`.
pub(crate) fn mask<T: WithDType>(grad: &[T], y: &[T], act: Activation, rule: GradientRule, out: &mut [T]) {
    out.par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
        .for_each(|(o, (g, y))| mask_row(g, y, act, rule, o));
}

/// Applies `act` in place, in parallel.
pub(crate) fn activate<T: WithDType>(y: &mut [T], act: Activation) {
    if act != Activation::None {
        y.par_chunks_mut(CHUNK).for_each(|c| activate_serial(c, act));
    }
}

/// `grad ⊙ act′`, with the derivative read from the activation's output `y`: `y > 0` for ReLU
/// (the same as `x > 0`), `0 < y < 6` for ReLU6.
pub(crate) fn activation_gradient<T: WithDType>(grad: &[T], y: &[T], act: Activation, rule: GradientRule) -> Vec<T> {
    // Every element is written below.
    let mut out: Vec<T> = crate::output_vec(grad.len());
    mask(grad, y, act, rule, &mut out);
    out
}

/// The activation as a one-pass custom op on the CPU (candle's tensor-op versions take three
/// to eight passes forward and as many backward).
struct ActOp(Activation);

fn map<T: WithDType>(s: &[T], l: &Layout, act: Activation) -> candle_core::Result<Vec<T>> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("activation: the input must be contiguous")
    };
    let mut y = s[a..b].to_vec();
    activate(&mut y, act);
    Ok(y)
}

impl CustomOp1 for ActOp {
    fn name(&self) -> &'static str {
        "extremal-activation"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(map(v, l, self.0)?),
            CpuStorage::F64(v) => CpuStorage::F64(map(v, l, self.0)?),
            _ => candle_core::bail!("activation: only f32 and f64 are supported on the CPU"),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(act_grad(&grad.contiguous()?, res, self.0)?))
    }
}

/// `grad ⊙ act′(output)` for a CPU gradient and the activation's output (one pass).
pub(crate) fn act_grad(grad: &Tensor, output: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    if act == Activation::None {
        return Ok(grad.clone());
    }
    grad.contiguous()?.apply_op1_no_bwd(&ActGrad {
        output: output.contiguous()?,
        act,
        rule: take_gradient_rule(),
    })
}

/// `grad ⊙ act′(output)`.
struct ActGrad {
    output: Tensor,
    act: Activation,
    rule: GradientRule,
}

impl CustomOp1 for ActGrad {
    fn name(&self) -> &'static str {
        "extremal-activation-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("activation backward: the gradient must be contiguous")
        };
        let (ys, yl) = self.output.storage_and_layout();
        let candle_core::Storage::Cpu(ys) = &*ys else {
            candle_core::bail!("activation backward: the output must be on the CPU")
        };
        let Some((ya, yb)) = yl.contiguous_offsets() else {
            candle_core::bail!("activation backward: the output must be contiguous")
        };
        let out = match s {
            CpuStorage::F32(g) => CpuStorage::F32(activation_gradient(
                &g[a..b],
                &ys.as_slice::<f32>()?[ya..yb],
                self.act,
                self.rule,
            )),
            CpuStorage::F64(g) => CpuStorage::F64(activation_gradient(
                &g[a..b],
                &ys.as_slice::<f64>()?[ya..yb],
                self.act,
                self.rule,
            )),
            _ => candle_core::bail!("activation: only f32 and f64 are supported on the CPU"),
        };
        Ok((out, l.shape().clone()))
    }
}

/// `act(a + b)`, the sum of a residual block's branches and its activation, in one pass, with
/// the gradient `grad ⊙ act′` (under the thread's [`GradientRule`], counted as one activation)
/// to both. Off the CPU, for other dtypes or for shapes that differ, it is `act.apply(a + b)`
/// with broadcasting.
///
/// # Shapes
/// - `a`, `b`: the same shape (or broadcastable); the output has the broadcast shape.
pub fn add_activation(a: &Tensor, b: &Tensor, act: Activation) -> Result<Tensor> {
    if act == Activation::None || a.dims() != b.dims() || !cpu_float(a) || !cpu_float(b) || a.dtype() != b.dtype() {
        let sum = if a.dims() == b.dims() {
            a.add(b)?
        } else {
            a.broadcast_add(b)?
        };
        return act.apply(&sum);
    }
    Ok(a.contiguous()?.apply_op2(&b.contiguous()?, AddActOp(act))?)
}

/// [`add_activation`] on the CPU.
struct AddActOp(Activation);

impl CustomOp2 for AddActOp {
    fn name(&self) -> &'static str {
        "extremal-add-activation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        fn run<T: WithDType>(a: &[T], b: &[T], act: Activation) -> Vec<T> {
            // Every element is written below.
            let mut y: Vec<T> = crate::output_vec(a.len());
            y.par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
                .for_each(|(y, (a, b))| {
                    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                        *y = a + b;
                    }
                    activate_serial(y, act);
                });
            y
        }
        let name = "add_activation";
        let out = match (s1, s2) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => CpuStorage::F32(run(
                crate::contiguous_slice::<f32>(s1, l1, name)?,
                crate::contiguous_slice::<f32>(s2, l2, name)?,
                self.0,
            )),
            (CpuStorage::F64(_), CpuStorage::F64(_)) => CpuStorage::F64(run(
                crate::contiguous_slice::<f64>(s1, l1, name)?,
                crate::contiguous_slice::<f64>(s2, l2, name)?,
                self.0,
            )),
            _ => candle_core::bail!("add_activation: only f32 and f64 are supported on the CPU"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = act_grad(grad, res, self.0)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// The generic (non-CPU) activations only know the standard derivative.
fn refuse_rule(op: &str) -> Result<()> {
    match gradient_rule() {
        GradientRule::Standard => Ok(()),
        rule => Err(candle_core::Error::Msg(format!(
            "{op}: the {rule:?} gradient rule needs the CPU kernels (f32 or f64 on the CPU)"
        ))
        .into()),
    }
}

fn cpu_float(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// ReLU whose gradient is 0 where the input is exactly 0, as in PyTorch (candle's is 1).
///
/// # Shapes
/// - `x`: any shape; the output has the same shape.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(x.relu()?);
    }
    if cpu_float(x) {
        return Ok(x.contiguous()?.apply_op1(ActOp(Activation::Relu))?);
    }
    refuse_rule("relu")?;
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
    if cpu_float(x) {
        return Ok(x.contiguous()?.apply_op1(ActOp(Activation::Relu6))?);
    }
    refuse_rule("relu6")?;
    let inside = x.gt(0.0)?.mul(&x.lt(6.0)?)?.to_dtype(x.dtype())?;
    let above = (x.ge(6.0)?.to_dtype(x.dtype())? * 6.0)?;
    Ok(x.mul(&inside)?.add(&above)?)
}
