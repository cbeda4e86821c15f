//! The engine on its own: the area-weight schedules, and a parameterisation written outside
//! the crate (a mask over the features of a 2-d site) run by `optimise` with any optimiser.

use candle_core::{Device, Tensor, Var};
use extremal_hook::{Graph, Node};
use extremal_mask::{
    optimise, Adam, AreaWeight, ClassEvidence, Game, MaskParameterisation, MaskValues, Objective, Observer, Reward,
    Site, TieOrder,
};

#[test]
fn area_weights_follow_their_schedules() {
    let g = AreaWeight::Geometric {
        start: 2.0,
        growth: 1.5,
        ceiling: None,
    }
    .weights(4);
    assert_eq!(g, vec![2.0, 3.0, 4.5, 6.75]);
    let held = AreaWeight::Geometric {
        start: 2.0,
        growth: 1.5,
        ceiling: Some(4.0),
    }
    .weights(4);
    assert_eq!(held, vec![2.0, 3.0, 4.0, 4.0]);
    let r = AreaWeight::Ramp { end: 10.0, over: 4 }.weights(6);
    assert_eq!(r, vec![0.0, 2.5, 5.0, 7.5, 10.0, 10.0]);
}

/// Keeps features of a `(1, n)` site; dropped features become 0.
struct FeatureMask {
    params: Var,
    features: Tensor,
}

impl MaskParameterisation for FeatureMask {
    fn params(&self) -> &Var {
        &self.params
    }

    fn masks(&self) -> extremal_mask::Result<MaskValues> {
        let m = self.params.as_tensor().clone();
        Ok(MaskValues {
            area: m.clone(),
            masks: m,
        })
    }

    fn perturb(&self, masks: &Tensor, _iteration: usize) -> extremal_mask::Result<Tensor> {
        Ok(self.features.broadcast_mul(masks)?)
    }
}

#[derive(Default)]
struct Count {
    before: usize,
    after: usize,
}

impl Observer for Count {
    fn before_step(&mut self, t: usize, _params: &Var) -> extremal_mask::Result<()> {
        assert_eq!(t, self.before);
        self.before += 1;
        Ok(())
    }

    fn after_step(&mut self, _t: usize, masks: &Tensor) -> extremal_mask::Result<()> {
        assert_eq!(masks.dims(), [1, 6]);
        self.after += 1;
        Ok(())
    }
}

#[test]
fn a_new_parameterisation_is_a_trait_impl() -> Result<(), Box<dyn std::error::Error>> {
    // Class 0 = 3·f1 + 2·f4 − f0: the mask of 2 features that preserves most keeps 1 and 4.
    let w = Tensor::new(&[[-1f32, 3.0, 0.0, 0.0, 2.0, 0.0], [0.0; 6]], &Device::Cpu)?;
    let net = Graph::new(Node::seq(
        "",
        vec![
            Node::layer("features", |x: &Tensor| x.flatten_from(1)),
            Node::layer("logits", move |x: &Tensor| x.matmul(&w.t()?)),
        ],
    ));
    let x = Tensor::ones((1, 6, 1, 1), candle_core::DType::F32, &Device::Cpu)?;
    let site = Site::new(&net, &x, "features")?;
    let param = FeatureMask {
        params: Var::from_tensor(&Tensor::full(0.5f32, (1, 6), &Device::Cpu)?)?,
        features: site.activation().clone(),
    };
    let objective = Objective {
        game: Game::Preserve,
        reward_scale: 0.2,
        areas: vec![2.0 / 6.0],
        ties: TieOrder::Index,
        area_weight: AreaWeight::Ramp { end: 10.0, over: 200 },
        iterations: 200,
    };
    let mut count = Count::default();
    let evidence = ClassEvidence {
        site: &site,
        target: 0,
        reward: Reward::Simple,
    };
    let history = optimise(&evidence, &param, &objective, &mut Adam::new(0.05), &mut count)?;
    assert_eq!((history.len(), count.before, count.after), (200, 200, 200));
    let m = param.params().as_tensor().flatten_all()?.to_vec1::<f32>()?;
    println!("{m:?}, last reward {:?}", history.last().unwrap().rewards);
    assert!(m[1] > 0.9 && m[4] > 0.9, "{m:?}");
    assert!([0, 2, 3, 5].iter().all(|&i| m[i] < 0.1), "{m:?}");
    assert!((history.last().unwrap().rewards[0] - 5.0).abs() < 0.2);
    Ok(())
}
