//! A fused chain keeps its sites: hooks inside it see the layer-by-layer activations, and a
//! pass that wants none of them runs the fused module.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{Device, Module, Tensor};
use extremal_hook::{Graph, Hooks, Network, Node};

struct Scale(f64);
impl Module for Scale {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x * self.0
    }
}

struct Shift(f64);
impl Module for Shift {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x + self.0
    }
}

/// `2x + 1` in one go, counting its calls.
struct Fused(Arc<AtomicUsize>);
impl Module for Fused {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.0.fetch_add(1, Ordering::SeqCst);
        (x * 2.0)? + 1.0
    }
}

#[test]
fn fused_chain_runs_fused_unless_an_inner_site_is_wanted() -> Result<(), Box<dyn std::error::Error>> {
    let calls = Arc::new(AtomicUsize::new(0));
    let chain = Node::fused(
        vec![Node::layer("conv", Scale(2.0)), Node::layer("bn", Shift(1.0))],
        Fused(calls.clone()),
    );
    let net = Graph::new(Node::seq("", vec![chain, Node::layer("out", Scale(3.0))]));
    assert_eq!(net.sites(), ["input", "conv", "bn", "out"]);
    let x = Tensor::new(&[[1f32, 2.0]], &Device::Cpu)?;
    let expect = vec![vec![9f32, 15.0]];

    // No hook: the fused module runs.
    assert_eq!(net.forward(&x)?.to_vec2::<f32>()?, expect);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A hook at the chain's last site: still fused, and the site is visited.
    let mut hooks = Hooks::new().read("bn");
    assert_eq!(net.forward_hooked(&x, &mut hooks)?.to_vec2::<f32>()?, expect);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(hooks.activation("bn").unwrap().to_vec2::<f32>()?, vec![vec![3f32, 5.0]]);

    // A hook inside the chain: layer by layer, and the inner activation is the layer's own.
    let mut hooks = Hooks::new().read("conv");
    assert_eq!(net.forward_hooked(&x, &mut hooks)?.to_vec2::<f32>()?, expect);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        hooks.activation("conv").unwrap().to_vec2::<f32>()?,
        vec![vec![2f32, 4.0]]
    );

    // Replacing inside the chain changes what follows it.
    let mut hooks = Hooks::new().replace("conv", Tensor::new(&[[0f32, 0.0]], &Device::Cpu)?);
    assert_eq!(
        net.forward_hooked(&x, &mut hooks)?.to_vec2::<f32>()?,
        vec![vec![3f32, 3.0]]
    );

    // A prefix at the inner site and its suffix give the full network.
    let prefix = net.prefix(&x, "conv")?;
    assert_eq!(prefix.activation().to_vec2::<f32>()?, vec![vec![2f32, 4.0]]);
    let y = net.suffix(&prefix, prefix.activation(), &mut Hooks::new())?;
    assert_eq!(y.to_vec2::<f32>()?, expect);
    Ok(())
}
