//! Backpropagation methods: gradient, deconvnet, guided backprop, Grad-CAM, linear approximation.

use candle_core::{Tensor, Var, D};
use extremal_hook::{Hooks, Network};
use extremal_ops::{set_gradient_rule, GradientRule};

use crate::{class_score, Method, Result};

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

    fn saliency(&self, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor> {
        let v = Var::from_tensor(x)?;
        let _rule = set_gradient_rule(self.rule);
        let logits = net.forward(v.as_tensor())?;
        let grads = class_score(&logits, target)?.sum_all()?.backward()?;
        let g = grads.get(v.as_tensor()).cloned().unwrap_or(x.zeros_like()?);
        Ok(g.abs()?.max_keepdim(1)?)
    }
}

/// The activation at `layer` and the gradient of the class score there.
fn activation_and_gradient(net: &dyn Network, x: &Tensor, layer: &str, target: usize) -> Result<(Tensor, Tensor)> {
    let site = net.resolve(layer)?;
    let mut hooks = Hooks::new().grad(&site);
    let logits = net.forward_hooked(&x.detach(), &mut hooks)?;
    let grads = class_score(&logits, target)?.sum_all()?.backward()?;
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
        let (a, g) = activation_and_gradient(net, x, &self.layer, target)?;
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
    fn name(&self) -> &'static str {
        "linear-approx"
    }

    fn saliency(&self, net: &dyn Network, x: &Tensor, target: usize) -> Result<Tensor> {
        let (a, g) = activation_and_gradient(net, x, &self.layer, target)?;
        Ok((a * g)?.sum_keepdim(1)?)
    }
}
