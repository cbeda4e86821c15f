//! The optimisers follow torch.optim's update rules.

use candle_core::{Device, Tensor, Var};
use extremal_ops::{Adam, CosineDecay, Optimiser, Sgd};

#[test]
fn sgd_with_momentum_and_dampening_is_pytorchs() {
    // torch.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.9), p = 1, gradients 1, 2, 3:
    // buffers 1 (raw first step), 0.9·1 + 0.1·2 = 1.1, 0.9·1.1 + 0.1·3 = 1.29.
    let p = Var::new(&[1f64], &Device::Cpu).unwrap();
    let mut opt = Sgd::new(0.1, 0.9, 0.9);
    let mut expected = 1.0;
    for (g, b) in [(1.0, 1.0), (2.0, 1.1), (3.0, 1.29)] {
        opt.step(&p, &Tensor::new(&[g], &Device::Cpu).unwrap()).unwrap();
        expected -= 0.1 * b;
        let v = p.as_tensor().to_vec1::<f64>().unwrap()[0];
        assert!((v - expected).abs() < 1e-12, "{v} vs {expected}");
    }
}

#[test]
fn adam_first_step_moves_by_the_learning_rate() {
    // With bias correction the first Adam step is lr·g/(|g| + ε) ≈ lr·sign(g).
    let p = Var::new(&[0.5f64, 0.5], &Device::Cpu).unwrap();
    let mut opt = Adam::new(0.05);
    opt.step(&p, &Tensor::new(&[3.0f64, -0.01], &Device::Cpu).unwrap())
        .unwrap();
    let v = p.as_tensor().to_vec1::<f64>().unwrap();
    assert!((v[0] - 0.45).abs() < 1e-6 && (v[1] - 0.55).abs() < 1e-5, "{v:?}");
}

#[test]
fn cosine_decay_holds_then_anneals_to_zero() {
    // Plain SGD at 0.1 under the schedule: steps 0 and 1 at 0.1, then 0.1·(1 + cos(π·k/4))/2
    // for k = 0, 1, 2, 3 (hold 2, 6 steps): 0.1, 0.0854, 0.05, 0.0146; gradient 1 each step.
    let p = Var::new(&[0f64], &Device::Cpu).unwrap();
    let mut opt = CosineDecay::new(Sgd::new(0.1, 0.0, 0.0), 2, 6);
    let rates: Vec<f64> = (0..7).map(|t| opt.learning_rate_at(t)).collect();
    let expected = [0.1, 0.1, 0.1, 0.085355339, 0.05, 0.014644661, 0.0];
    for (r, e) in rates.iter().zip(expected) {
        assert!((r - e).abs() < 1e-8, "{rates:?}");
    }
    let mut moved = 0.0;
    for t in 0..6 {
        assert!((opt.learning_rate() - expected[t]).abs() < 1e-8);
        opt.step(&p, &Tensor::new(&[1.0f64], &Device::Cpu).unwrap()).unwrap();
        moved += rates[t];
        let v = p.as_tensor().to_vec1::<f64>().unwrap()[0];
        assert!((v + moved).abs() < 1e-12, "{v} after step {t}");
    }
}
