//! Excitation backprop through a convolution with a batch norm folded in: the fused kernel
//! must pass the same signal as the chain run layer by layer (TorchRay's rule: clamp the
//! convolution's own weights, pass the norm through), also where the norm's γ is negative.

use candle_core::{DType, Device, Tensor, Var};
use extremal_hook::{Graph, Hooks, Network, Node};
use extremal_models::layers::{
    conv_chain, BatchNorm, Conv, ConvPadding, ConvSpec, ParamKind, ParamSource, RandomParams,
};
use extremal_ops::{set_excitation_backprop, Activation};

/// Random parameters whose batch-norm scales are negative on every other channel.
struct NegativeGamma(RandomParams);

impl ParamSource for NegativeGamma {
    fn param(&mut self, name: &str, shape: &[usize], kind: ParamKind) -> extremal_models::Result<Tensor> {
        let t = self.0.param(name, shape, kind)?;
        if kind != ParamKind::BnWeight {
            return Ok(t);
        }
        let signs: Vec<f64> = (0..shape[0]).map(|i| if i % 2 == 1 { -1.0 } else { 1.0 }).collect();
        Ok(t.mul(&Tensor::new(signs, &Device::Cpu)?)?)
    }
}

fn chain(p: &mut dyn ParamSource) -> Graph {
    let conv = Conv::load(p, "conv", ConvSpec::new(3, 6, 3).padding(ConvPadding::Fixed(1))).unwrap();
    let bn = BatchNorm::load(p, "bn", 6, 1e-5).unwrap();
    let node = conv_chain(("conv", conv), Some(("bn", bn)), Some(("relu", Activation::Relu))).unwrap();
    Graph::new(Node::seq("", vec![node]))
}

/// The excitation at the input for a signal `p` at the output, with the chain fused or not.
fn signal(net: &Graph, x: &Tensor, p: &Tensor, layer_by_layer: bool) -> Tensor {
    let v = Var::from_tensor(x).unwrap();
    let mut hooks = if layer_by_layer {
        Hooks::new().read("bn")
    } else {
        Hooks::new()
    };
    let _ebp = set_excitation_backprop(true);
    let y = net.forward_hooked(v.as_tensor(), &mut hooks).unwrap();
    assert_eq!(hooks.activation("bn").is_some(), layer_by_layer);
    let grads = y.mul(p).unwrap().sum_all().unwrap().backward().unwrap();
    grads.get(v.as_tensor()).unwrap().clone()
}

#[test]
fn the_fused_kernel_passes_the_signal_of_the_chain() {
    let x = Tensor::rand(0f64, 1.0, (1, 3, 7, 5), &Device::Cpu).unwrap();
    let p = Tensor::rand(0f64, 1.0, (1, 6, 7, 5), &Device::Cpu).unwrap();
    for negative in [false, true] {
        let params = RandomParams::new(3, DType::F64, &Device::Cpu);
        let net = if negative {
            chain(&mut NegativeGamma(params))
        } else {
            chain(&mut { params })
        };
        let fused = signal(&net, &x, &p, false);
        let chained = signal(&net, &x, &p, true);
        let d = (&fused - &chained)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let scale = chained.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(scale > 0.0);
        assert!(d < 1e-9 * scale.max(1.0), "negative γ {negative}: {d} of {scale}");
    }
}
