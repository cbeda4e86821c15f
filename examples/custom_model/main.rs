//! Bring your own candle model: implement `extremal::hook::Network` for a small CNN built from
//! `candle_nn` layers, then read, mask and differentiate its sites like any model of the zoo.
//!
//! ```text
//! cargo run --release --example custom_model
//! ```

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Conv2dConfig, VarBuilder, VarMap};
use extremal::hook::{Hook, Hooks, Network};

/// input → conv1 → relu1 → conv2 → relu2 → pool (global average) → fc.
struct TinyCnn {
    conv1: candle_nn::Conv2d,
    conv2: candle_nn::Conv2d,
    fc: candle_nn::Linear,
}

impl TinyCnn {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            conv1: candle_nn::conv2d(3, 8, 3, cfg, vb.pp("conv1"))?,
            conv2: candle_nn::conv2d(8, 16, 3, Conv2dConfig { stride: 2, ..cfg }, vb.pp("conv2"))?,
            fc: candle_nn::linear(16, 10, vb.pp("fc"))?,
        })
    }
}

impl Network for TinyCnn {
    fn sites(&self) -> Vec<String> {
        ["input", "conv1", "relu1", "conv2", "relu2", "pool", "fc"]
            .map(String::from)
            .to_vec()
    }

    fn aliases(&self) -> Vec<(String, String)> {
        vec![("layer4".into(), "relu2".into())]
    }

    /// Call `hook.visit(site, tensor)` on every site's output and continue with what it returns.
    fn forward_hooked(&self, x: &Tensor, hook: &mut dyn Hook) -> extremal::hook::Result<Tensor> {
        let x = hook.visit("input", x.clone())?;
        let x = hook.visit("conv1", self.conv1.forward(&x)?)?;
        let x = hook.visit("relu1", x.relu()?)?;
        let x = hook.visit("conv2", self.conv2.forward(&x)?)?;
        let x = hook.visit("relu2", x.relu()?)?;
        let x = hook.visit("pool", x.mean_keepdim(3)?.mean_keepdim(2)?.flatten_from(1)?)?;
        hook.visit("fc", self.fc.forward(&x)?)
    }
}

fn main() -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let net = TinyCnn::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 3, 32, 32), &dev)?)?;

    // 1. Read a site (aliases resolve to native names).
    let site = net.resolve("layer4")?;
    let mut hooks = Hooks::new().read(&site).grad(&site);
    let logits = net.forward_hooked(x.as_tensor(), &mut hooks)?;
    let act = hooks.activation(&site).unwrap().clone();
    println!("site {site}: activation {:?}", act.dims());

    // 2. Gradient of the class-3 logit at the site and at the input, in one backward pass.
    let grads = logits.narrow(1, 3, 1)?.sum_all()?.backward()?;
    let g_site = hooks.gradient(&grads, &site)?;
    let g_input = grads.get(x.as_tensor()).unwrap();
    println!(
        "gradient at {site}: {:?}, at the input: {:?}",
        g_site.dims(),
        g_input.dims()
    );

    // 3. Keep only channels 0..4 at the site: mask hook on a full pass, or prefix once + suffix.
    let mask = Tensor::from_vec(
        (0..16).map(|c| if c < 4 { 1f32 } else { 0. }).collect(),
        (1, 16, 1, 1),
        &dev,
    )?;
    let masked = net.forward_hooked(x.as_tensor(), &mut Hooks::new().mask(&site, mask.clone()))?;
    let prefix = net.prefix(x.as_tensor(), &site)?;
    let resumed = net.suffix(&prefix, &prefix.activation().broadcast_mul(&mask)?, &mut Hooks::new())?;
    let diff = (masked - &resumed)?.abs()?.max_all()?.to_scalar::<f32>()?;
    println!("masked logits, hook vs prefix+suffix: max difference {diff:e}");

    // 4. Errors name the nearest sites.
    match net.resolve("relu3") {
        Err(e) => println!("{e}"),
        Ok(_) => unreachable!(),
    }
    Ok(())
}
