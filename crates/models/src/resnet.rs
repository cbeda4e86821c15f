//! ResNet-18/34/50/101/152 with torchvision's structure and weight names.

use extremal_hook::{Graph, Node};
use extremal_ops::{Activation, Pool2d};

use crate::layers::{
    conv_chain, node, AdaptiveAvgPool, BatchNorm, Conv, ConvPadding, ConvSpec, Flatten, Linear, MaxPool, ParamSource,
};
use crate::Result;

const EPS: f64 = 1e-5;

/// Blocks per stage and whether the blocks are bottlenecks, for a depth.
pub(crate) fn config(depth: usize) -> Option<([usize; 4], bool)> {
    Some(match depth {
        18 => ([2, 2, 2, 2], false),
        34 => ([3, 4, 6, 3], false),
        50 => ([3, 4, 6, 3], true),
        101 => ([3, 4, 23, 3], true),
        152 => ([3, 8, 36, 3], true),
        _ => return None,
    })
}

/// `{prefix}{conv}` then `{prefix}{bn}` then, with `relu`, the ReLU site `relu` (empty: no
/// site), as one fused chain.
fn conv_bn(
    p: &mut dyn ParamSource,
    prefix: &str,
    (conv, bn): (&str, &str),
    relu: Option<&str>,
    (c_in, c_out, k, s, pad): (usize, usize, usize, usize, usize),
) -> Result<Node> {
    let spec = ConvSpec::new(c_in, c_out, k).stride(s).padding(ConvPadding::Fixed(pad));
    let c = Conv::load(p, &format!("{prefix}{conv}"), spec)?;
    let b = BatchNorm::load(p, &format!("{prefix}{bn}"), c_out, EPS)?;
    conv_chain(
        (&format!("{prefix}{conv}"), c),
        Some((&format!("{prefix}{bn}"), b)),
        relu.map(|name| (name, Activation::Relu)),
    )
}

fn block(
    p: &mut dyn ParamSource,
    name: &str,
    c_in: usize,
    width: usize,
    stride: usize,
    bottleneck: bool,
) -> Result<(Node, usize)> {
    let pre = format!("{name}.");
    let mut body = Vec::new();
    let c_out = if bottleneck {
        body.push(conv_bn(p, &pre, ("conv1", "bn1"), Some(""), (c_in, width, 1, 1, 0))?);
        body.push(conv_bn(
            p,
            &pre,
            ("conv2", "bn2"),
            Some(""),
            (width, width, 3, stride, 1),
        )?);
        body.push(conv_bn(p, &pre, ("conv3", "bn3"), None, (width, width * 4, 1, 1, 0))?);
        width * 4
    } else {
        body.push(conv_bn(
            p,
            &pre,
            ("conv1", "bn1"),
            Some(""),
            (c_in, width, 3, stride, 1),
        )?);
        body.push(conv_bn(p, &pre, ("conv2", "bn2"), None, (width, width, 3, 1, 1))?);
        width
    };
    let shortcut = if stride != 1 || c_in != c_out {
        let ds = conv_bn(
            p,
            &pre,
            ("downsample.0", "downsample.1"),
            None,
            (c_in, c_out, 1, stride, 0),
        )?;
        Some(Node::seq(&format!("{name}.downsample"), vec![ds]))
    } else {
        None
    };
    Ok((
        Node::residual_activation(name, Node::seq("", body), shortcut, Activation::Relu),
        c_out,
    ))
}

/// Builds a ResNet of `depth` (18, 34, 50, 101 or 152) with `classes` outputs.
pub fn resnet(p: &mut dyn ParamSource, depth: usize, classes: usize) -> Result<Graph> {
    let (blocks, bottleneck) =
        config(depth).ok_or_else(|| crate::Error::Model(format!("no ResNet of depth {depth}")))?;
    let mut nodes = Vec::new();
    nodes.push(conv_bn(p, "", ("conv1", "bn1"), Some("relu"), (3, 64, 7, 2, 3))?);
    nodes.push(node("maxpool", MaxPool(Pool2d::new(3, 2).with_padding(1))));
    let mut c_in = 64;
    for (stage, &n) in blocks.iter().enumerate() {
        let width = 64 << stage;
        let mut stage_nodes = Vec::new();
        for i in 0..n {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            let (b, c_out) = block(p, &format!("layer{}.{i}", stage + 1), c_in, width, stride, bottleneck)?;
            stage_nodes.push(b);
            c_in = c_out;
        }
        nodes.push(Node::seq(&format!("layer{}", stage + 1), stage_nodes));
    }
    nodes.push(node("avgpool", AdaptiveAvgPool(1, 1)));
    nodes.push(node("", Flatten));
    nodes.push(node("fc", Linear::load(p, "fc", c_in, classes)?));
    Ok(Graph::new(Node::seq("", nodes)))
}
