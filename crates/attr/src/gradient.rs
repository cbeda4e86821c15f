//! Backpropagation methods: gradient, deconvnet, guided backprop, Grad-CAM, linear approximation,
//! excitation backprop and its contrastive variant.

use candle_core::{Tensor, Var, D};
use extremal_hook::{Hooks, Network};
use extremal_ops::{last_classifier, set_excitation_backprop, set_gradient_rule, GradientRule};

use crate::{batch_class_score, class_score, Method, Result};

/// The gradient of the class score with respect to the input, under a ReLU rule: `Standard`
/// (the gradient), `Deconvnet` or `Guided` (guided backpropagation). Saliency: the maximum
/// over colour channels of its absolute value (TorchRay's `gradient_to_saliency`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gradient {
    /// How ReLU and ReLU6 pass gradients backward.
    pub rule: GradientRule,
}

impl Gradient {
    /// Deconvnet (Zeiler & Fergus 2014).
    pub fn deconvnet() -> Self {
        Self {
            rule: GradientRule::Deconvnet,
        }
    }

    /// Guided backpropagation (Springenberg et al. 2015).
    pub fn guided() -> Self {
        Self {
            rule: GradientRule::Guided,
        }
    }
}

impl Method for Gradient {
    fn name(&self) -> &'static str {
        match self.rule {
            GradientRule::Deconvnet => "deconvnet",
            GradientRule::Guided => "guided-backprop",
            _ => "gradient",
        }
    }

    fn pointing_smooth(&self) -> f64 {
        0.02
    }

    fn saliency(&self, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor> {
        self.saliency_batch(net, x, &[target])
    }

    fn batches(&self) -> bool {
        true
    }

    fn saliency_batch(&self, net: &dyn Network, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
        let v = Var::from_tensor(x)?;
        let _rule = set_gradient_rule(self.rule);
        let logits = net.forward(v.as_tensor())?;
        let grads = batch_class_score(&logits, targets)?.backward()?;
        let g = grads.get(v.as_tensor()).cloned().unwrap_or(x.zeros_like()?);
        Ok(g.abs()?.max_keepdim(1)?)
    }
}

/// The activation at `layer` and the gradient of each image's class score there.
fn activation_and_gradient(net: &dyn Network, x: &Tensor, layer: &str, targets: &[usize]) -> Result<(Tensor, Tensor)> {
    let site = net.resolve(layer)?;
    let mut hooks = Hooks::new().grad(&site);
    let logits = net.forward_hooked(&x.detach(), &mut hooks)?;
    let grads = batch_class_score(&logits, targets)?.backward()?;
    let a = hooks
        .activation(&site)
        .cloned()
        .ok_or_else(|| crate::Error::Invalid(format!("the forward pass never reached `{site}`")))?;
    let g = hooks.gradient(&grads, &site)?;
    if a.rank() != 4 {
        return Err(crate::Error::Invalid(format!(
            "`{layer}` has a {}-d activation; a saliency layer needs (N, C, H, W): choose a convolutional site",
            a.rank()
        )));
    }
    Ok((a.detach(), g))
}

/// Grad-CAM (Selvaraju et al. 2017) at a site: `relu(Σ_c A_c · mean_hw ∂y/∂A_c)`.
#[derive(Debug, Clone)]
pub struct GradCam {
    /// The site (TorchRay's default for ResNets: `layer4`).
    pub layer: String,
}

impl Method for GradCam {
    fn name(&self) -> &'static str {
        "grad-cam"
    }

    fn saliency(&self, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor> {
        self.saliency_batch(net, x, &[target])
    }

    fn batches(&self) -> bool {
        true
    }

    fn saliency_batch(&self, net: &dyn Network, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
        let (a, g) = activation_and_gradient(net, x, &self.layer, targets)?;
        let weight = g.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?;
        Ok(a.broadcast_mul(&weight)?.sum_keepdim(1)?.relu()?)
    }
}

/// Linear approximation at a site: `Σ_c A_c · ∂y/∂A_c` (TorchRay's `linear_approx`).
#[derive(Debug, Clone)]
pub struct LinearApprox {
    /// The site.
    pub layer: String,
}

impl Method for LinearApprox {
    fn signed(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "linear-approx"
    }

    fn saliency(&self, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor> {
        self.saliency_batch(net, x, &[target])
    }

    fn batches(&self) -> bool {
        true
    }

    fn saliency_batch(&self, net: &dyn Network, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
        let (a, g) = activation_and_gradient(net, x, &self.layer, targets)?;
        Ok((a * g)?.sum_keepdim(1)?)
    }
}

/// Excitation backprop (Zhang et al. 2016), TorchRay's implementation: the class's one-hot
/// signal is backpropagated with excitation backprop's rules ([`extremal_ops::excite`]) to a
/// site, and the map is the signal summed over channels.
///
/// The contrastive variant subtracts the signal of the classifier with negated weights (the
/// "other classes"): TorchRay backpropagates it to a contrast layer in a first pass and
/// subtracts it there in a second. The rules are linear in the signal, so subtracting it at the
/// classifier's input gives the same map in one pass, for any contrast layer between the site
/// and the classifier; the contrastive map is then clamped at 0.
///
/// The rules are applied by the kernels of `extremal-ops` (convolution, fully connected,
/// average pooling), batch norms and residual sums of the model; ReLUs and max-pooling keep
/// their derivative. The classifier is the last fully connected layer of the forward pass.
#[derive(Debug, Clone)]
pub struct ExcitationBackprop {
    /// The site (TorchRay's benchmark: `layer3` of ResNet-50).
    pub layer: String,
    /// Contrastive excitation backprop.
    pub contrastive: bool,
}

impl Method for ExcitationBackprop {
    fn name(&self) -> &'static str {
        if self.contrastive {
            "contrastive-excitation-backprop"
        } else {
            "excitation-backprop"
        }
    }

    fn needs_model_class(&self) -> bool {
        self.contrastive
    }

    fn saliency(&self, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor> {
        let site = net.resolve(&self.layer)?;
        let mut hooks = Hooks::new().grad(&site);
        let _ebp = set_excitation_backprop(true);
        let logits = net.forward_hooked(&x.detach(), &mut hooks)?;
        let mut signal = class_score(&logits, target)?.sum_all()?;
        if self.contrastive {
            let classifier = last_classifier()
                .filter(|c| c.output.dims() == logits.dims())
                .ok_or_else(|| {
                    crate::Error::Invalid(
                        "contrastive excitation backprop needs a network whose last layer is fully connected \
                         (extremal_ops::linear); this network's output comes from elsewhere"
                            .into(),
                    )
                })?;
            let contrast = negated_classifier_signal(&classifier, target)?;
            signal = (signal - (&classifier.input * contrast)?.sum_all()?)?;
        }
        let grads = signal.backward()?;
        let g = hooks.gradient(&grads, &site)?;
        if g.rank() != 4 {
            return Err(crate::Error::Invalid(format!(
                "`{}` has a {}-d activation; a saliency layer needs (N, C, H, W): choose a convolutional site",
                self.layer,
                g.rank()
            )));
        }
        let map = g.sum_keepdim(1)?;
        Ok(if self.contrastive { map.relu()? } else { map })
    }
}

/// The excitation that the class's one-hot signal gives the classifier's input through the
/// classifier with negated weights: `x ⊙ W⁻ᵀ(e_c ⊘ (W⁻x + 10⁻²⁰))`, `W⁻ = max(−W, 0)`.
fn negated_classifier_signal(classifier: &extremal_ops::Classifier, target: usize) -> Result<Tensor> {
    let x = classifier.input.detach();
    let negated = classifier.weight_t.neg()?.relu()?;
    let response = (x.matmul(&negated)? + 1e-20)?;
    let (n, classes) = response.dims2()?;
    let mut onehot = vec![0f64; n * classes];
    for row in 0..n {
        onehot[row * classes + target] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (n, classes), x.device())?.to_dtype(x.dtype())?;
    Ok((onehot / response)?.matmul(&negated.t()?)?.mul(&x)?)
}
