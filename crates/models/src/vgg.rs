//! VGG16 with torchvision's structure and names (`features.N`, `classifier.N`).

use extremal_hook::{Graph, Node};
use extremal_ops::{Activation, Pool2d};

use crate::layers::{
    conv_chain, node, AdaptiveAvgPool, Conv, ConvPadding, ConvSpec, Flatten, Identity, Linear, MaxPool, ParamSource,
    Relu,
};
use crate::{Result, Weights};

const CFG: [usize; 18] = [
    64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0,
];

/// Builds VGG16 with `classes` outputs.
pub fn vgg16(p: &mut dyn ParamSource, classes: usize) -> Result<Graph> {
    let mut features = Vec::new();
    let mut c_in = 3;
    // torchvision's index of the next module in `features`.
    let mut i = 0;
    for &c in CFG.iter() {
        if c == 0 {
            features.push(node(&format!("features.{i}"), MaxPool(Pool2d::new(2, 2))));
            i += 1;
        } else {
            let name = format!("features.{i}");
            let conv = Conv::load(
                p,
                &name,
                ConvSpec::new(c_in, c, 3).padding(ConvPadding::Fixed(1)).with_bias(),
            )?;
            let relu = format!("features.{}", i + 1);
            features.push(conv_chain((&name, conv), None, Some((&relu, Activation::Relu)))?);
            c_in = c;
            i += 2;
        }
    }
    let classifier = vec![
        node("classifier.0", Linear::load(p, "classifier.0", 512 * 7 * 7, 4096)?),
        node("classifier.1", Relu),
        node("classifier.2", Identity),
        node("classifier.3", Linear::load(p, "classifier.3", 4096, 4096)?),
        node("classifier.4", Relu),
        node("classifier.5", Identity),
        node("classifier.6", Linear::load(p, "classifier.6", 4096, classes)?),
    ];
    let root = Node::seq(
        "",
        vec![
            Node::seq("features", features),
            node("avgpool", AdaptiveAvgPool(7, 7)),
            node("", Flatten),
            Node::seq("classifier", classifier),
        ],
    );
    Ok(Graph::new(root)
        .with_alias("layer1", "features.15")
        .with_alias("layer2", "features.22")
        .with_alias("layer3", "features.29")
        .with_alias("layer4", "features.30"))
}

/// Renames timm's VGG16 (`pre_logits.fc1` as a 7×7 convolution, `pre_logits.fc2`, `head.fc`)
/// to torchvision's `classifier.0/3/6`; torchvision-named weights pass unchanged.
pub fn timm_to_torchvision(mut w: Weights) -> Result<Weights> {
    let moves = [
        ("pre_logits.fc1", "classifier.0"),
        ("pre_logits.fc2", "classifier.3"),
        ("head.fc", "classifier.6"),
    ];
    for (from, to) in moves {
        for suffix in ["weight", "bias"] {
            if let Some(t) = w.remove(&format!("{from}.{suffix}")) {
                let t = if suffix == "weight" && t.rank() == 4 {
                    let o = t.dim(0)?;
                    t.reshape((o, t.elem_count() / o))?
                } else {
                    t
                };
                w.insert(&format!("{to}.{suffix}"), t);
            }
        }
    }
    Ok(w)
}
