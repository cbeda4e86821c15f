//! GoogLeNet (Inception v1) with torchvision's structure and names; `inception4d` (528
//! channels, 14×14) is the site of the paper's channel experiments.

use candle_core::{Module, Tensor};
use extremal_hook::{Graph, Node};
use extremal_ops::{Activation, Pool2d};

use crate::layers::{
    conv_chain, node, AdaptiveAvgPool, BatchNorm, Conv, ConvPadding, ConvSpec, Flatten, Identity, Linear, MaxPool,
    ParamSource,
};
use crate::Result;

fn basic(
    p: &mut dyn ParamSource,
    name: &str,
    c_in: usize,
    c_out: usize,
    k: usize,
    s: usize,
    pad: usize,
) -> Result<Node> {
    let spec = ConvSpec::new(c_in, c_out, k).stride(s).padding(ConvPadding::Fixed(pad));
    let conv = Conv::load(p, &format!("{name}.conv"), spec)?;
    let bn = BatchNorm::load(p, &format!("{name}.bn"), c_out, 1e-3)?;
    let chain = conv_chain(
        (&format!("{name}.conv"), conv),
        Some((&format!("{name}.bn"), bn)),
        Some(("", Activation::Relu)),
    )?;
    Ok(Node::seq(name, vec![chain]))
}

/// An inception block on `c_in` channels with branch widths `[c1, c3r, c3, c5r, c5, pool]`
/// (torchvision's order).
fn inception(
    p: &mut dyn ParamSource,
    name: &str,
    c_in: usize,
    [c1, c3r, c3, c5r, c5, pool]: [usize; 6],
) -> Result<(Node, usize)> {
    let b = |i: usize| format!("{name}.branch{i}");
    let branches = vec![
        basic(p, &b(1), c_in, c1, 1, 1, 0)?,
        Node::seq(
            &b(2),
            vec![
                basic(p, &format!("{}.0", b(2)), c_in, c3r, 1, 1, 0)?,
                basic(p, &format!("{}.1", b(2)), c3r, c3, 3, 1, 1)?,
            ],
        ),
        // torchvision's "5x5" branch uses a 3x3 kernel (kept for weight compatibility).
        Node::seq(
            &b(3),
            vec![
                basic(p, &format!("{}.0", b(3)), c_in, c5r, 1, 1, 0)?,
                basic(p, &format!("{}.1", b(3)), c5r, c5, 3, 1, 1)?,
            ],
        ),
        Node::seq(
            &b(4),
            vec![
                node(
                    &format!("{}.0", b(4)),
                    MaxPool(Pool2d::new(3, 1).with_padding(1).with_ceil_mode(true)),
                ),
                basic(p, &format!("{}.1", b(4)), c_in, pool, 1, 1, 0)?,
            ],
        ),
    ];
    Ok((Node::concat(name, branches), c1 + c3 + c5 + pool))
}

/// torchvision's `transform_input`: the pretrained weights expect inputs normalised with
/// mean 0.5 / std 0.5, so ImageNet-normalised inputs are converted first.
struct TransformInput;
impl crate::layers::Footprinted for TransformInput {
    fn footprint(&self) -> extremal_hook::Footprint {
        extremal_hook::Footprint::Pointwise
    }
}

impl Module for TransformInput {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        let scale: Vec<f64> = std.iter().map(|s| s / 0.5).collect();
        let shift: Vec<f64> = mean.iter().map(|m| (m - 0.5) / 0.5).collect();
        let scale = Tensor::from_vec(scale, (1, 3, 1, 1), x.device())?.to_dtype(x.dtype())?;
        let shift = Tensor::from_vec(shift, (1, 3, 1, 1), x.device())?.to_dtype(x.dtype())?;
        x.broadcast_mul(&scale)?.broadcast_add(&shift)
    }
}

/// Builds GoogLeNet with `classes` outputs; `transform_input` as torchvision's pretrained model.
pub fn googlenet(p: &mut dyn ParamSource, classes: usize, transform_input: bool) -> Result<Graph> {
    let pool = |name: &str, k: usize| node(name, MaxPool(Pool2d::new(k, 2).with_ceil_mode(true)));
    let mut nodes = Vec::new();
    if transform_input {
        nodes.push(node("", TransformInput));
    }
    nodes.push(basic(p, "conv1", 3, 64, 7, 2, 3)?);
    nodes.push(pool("maxpool1", 3));
    nodes.push(basic(p, "conv2", 64, 64, 1, 1, 0)?);
    nodes.push(basic(p, "conv3", 64, 192, 3, 1, 1)?);
    nodes.push(pool("maxpool2", 3));
    let specs: [(&str, [usize; 6]); 9] = [
        ("inception3a", [64, 96, 128, 16, 32, 32]),
        ("inception3b", [128, 128, 192, 32, 96, 64]),
        ("inception4a", [192, 96, 208, 16, 48, 64]),
        ("inception4b", [160, 112, 224, 24, 64, 64]),
        ("inception4c", [128, 128, 256, 24, 64, 64]),
        ("inception4d", [112, 144, 288, 32, 64, 64]),
        ("inception4e", [256, 160, 320, 32, 128, 128]),
        ("inception5a", [256, 160, 320, 32, 128, 128]),
        ("inception5b", [384, 192, 384, 48, 128, 128]),
    ];
    let mut c_in = 192;
    for (name, s) in specs {
        let (node, c_out) = inception(p, name, c_in, s)?;
        nodes.push(node);
        c_in = c_out;
        match name {
            "inception3b" => nodes.push(pool("maxpool3", 3)),
            "inception4e" => nodes.push(pool("maxpool4", 2)),
            _ => {}
        }
    }
    nodes.push(node("avgpool", AdaptiveAvgPool(1, 1)));
    nodes.push(node("", Flatten));
    nodes.push(node("dropout", Identity));
    nodes.push(node("fc", Linear::load(p, "fc", 1024, classes)?));
    Ok(Graph::new(Node::seq("", nodes))
        .with_alias("layer1", "conv3")
        .with_alias("layer2", "inception3b")
        .with_alias("layer3", "inception4e")
        .with_alias("layer4", "inception5b"))
}
