//! Hooks may name a site by the network's alias for it, and a name the network does not have
//! is refused instead of never firing.

use candle_core::{Device, Tensor, Var};
use extremal_hook::{Error, Graph, Hooks, Network, Node};

/// `y = 3 · (2x)²`, with sites `double`, `square`, `out` and the alias `layer1` for `square`.
fn net() -> Graph {
    Graph::new(Node::seq(
        "",
        vec![
            Node::layer("double", |x: &Tensor| x * 2.0),
            Node::layer("square", |x: &Tensor| x.sqr()),
            Node::layer("out", |x: &Tensor| x * 3.0),
        ],
    ))
    .with_alias("layer1", "square")
}

#[test]
fn actions_on_an_alias_fire_at_its_site() -> Result<(), Box<dyn std::error::Error>> {
    let net = net();
    let x = Var::new(&[1f64, 2.0], &Device::Cpu)?;

    // Read and gradient through the alias; both names find them afterwards.
    let mut hooks = Hooks::new().grad("layer1");
    let y = net.forward_hooked(&x, &mut hooks)?;
    let grads = y.sum_all()?.backward()?;
    assert_eq!(hooks.activation("layer1").unwrap().to_vec1::<f64>()?, [4.0, 16.0]);
    assert_eq!(hooks.activation("square").unwrap().to_vec1::<f64>()?, [4.0, 16.0]);
    assert_eq!(hooks.gradient(&grads, "layer1")?.to_vec1::<f64>()?, [3.0, 3.0]);
    assert_eq!(hooks.gradient(&grads, "square")?.to_vec1::<f64>()?, [3.0, 3.0]);
    assert_eq!(grads.get(&x).unwrap().to_vec1::<f64>()?, [24.0, 48.0]);

    // Replace through the alias, in a full pass and in a suffix pass.
    let ten = Tensor::new(&[10f64, 10.0], &Device::Cpu)?;
    let y = net.forward_hooked(&x, &mut Hooks::new().replace("layer1", ten.clone()))?;
    assert_eq!(y.to_vec1::<f64>()?, [30.0, 30.0]);
    let prefix = net.prefix(&x, "double")?;
    let y = net.suffix(&prefix, prefix.activation(), &mut Hooks::new().replace("layer1", ten))?;
    assert_eq!(y.to_vec1::<f64>()?, [30.0, 30.0]);

    // The same hooks run again (bound once, still right).
    let mut hooks = Hooks::new().mask("layer1", Tensor::new(&[0f64, 1.0], &Device::Cpu)?);
    for _ in 0..2 {
        assert_eq!(net.forward_hooked(&x, &mut hooks)?.to_vec1::<f64>()?, [0.0, 48.0]);
    }
    Ok(())
}

#[test]
fn an_unknown_site_is_refused_with_the_nearest_names() -> Result<(), Box<dyn std::error::Error>> {
    let net = net();
    let x = Tensor::new(&[1f64], &Device::Cpu)?;
    let err = net.forward_hooked(&x, &mut Hooks::new().read("squar")).unwrap_err();
    match &err {
        Error::UnknownSite { name, nearest } => {
            assert_eq!(name, "squar");
            assert_eq!(nearest.first().map(String::as_str), Some("square"));
        }
        other => panic!("expected an unknown-site error, got {other}"),
    }
    assert!(err.to_string().contains("unknown layer `squar`"), "{err}");
    // In a suffix pass too.
    let prefix = net.prefix(&x, "double")?;
    assert!(net
        .suffix(&prefix, prefix.activation(), &mut Hooks::new().grad("layer2"))
        .is_err());
    Ok(())
}
