//! Receptive fields computed from the graph's footprints equal the ones probed by gradients
//! (the input pixels whose change moves the activation at a position).

use candle_core::{DType, Device};
use extremal_hook::{probe_region, Network};
use extremal_models::{Model, ModelKind};

type R<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn check(kind: ModelKind, sites: &[&str], input: (usize, usize)) -> R<()> {
    let (model, _) = Model::random(kind, 0, DType::F32, &Device::Cpu)?;
    for site in sites {
        let rf = model
            .receptive_field(site, input)?
            .unwrap_or_else(|| panic!("{site}: no computed receptive field"));
        let (h, w) = rf.output;
        let x = candle_core::Tensor::zeros((1, 3, input.0, input.1), DType::F32, &Device::Cpu)?;
        assert_eq!(model.forward_to(&x, site)?.dims()[2..], [h, w], "{site}: output size");
        for (i, j) in [(0, 0), (h / 2, w / 2), (h - 1, w - 1), (h / 3, w - 1)] {
            let probed = probe_region(&model, site, input, (i, j), 3)?.expect("some pixel moves it");
            let computed = rf.region(i, j);
            println!(
                "{} {site} ({i}, {j}): computed {computed:?} probed {probed:?} ({rf:?})",
                kind.name()
            );
            assert_eq!(computed, probed, "{} {site} at ({i}, {j})", kind.name());
        }
    }
    Ok(())
}

#[test]
fn lite0_receptive_fields_match_probing() -> R<()> {
    // TF-SAME padding: the field's offset depends on the input size (odd sizes included).
    check(ModelKind::EfficientnetLite0, &["_blocks.4", "_blocks.10"], (224, 224))?;
    check(ModelKind::EfficientnetLite0, &["_blocks.2"], (99, 130))
}

#[test]
fn resnet50_receptive_fields_match_probing() -> R<()> {
    check(ModelKind::Resnet50, &["layer2", "layer3", "layer3.0.conv2"], (160, 192))
}
