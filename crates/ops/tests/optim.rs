//! The optimisers follow torch.optim's update rules.

use candle_core::{Device, Tensor, Var};
use extremal_ops::{Adam, LearningRate, Optimiser, Scheduled, Sgd};

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
fn cosine_schedule_holds_then_anneals_to_zero() {
    // Plain SGD under the schedule: steps 0 and 1 at 0.1, then 0.1·(1 + cos(π·k/4))/2 for
    // k = 0, 1, 2, 3 (hold 2, 6 steps): 0.1, 0.0854, 0.05, 0.0146; gradient 1 each step.
    let rate = LearningRate::Cosine {
        base: 0.1,
        hold: 2,
        steps: 6,
    };
    let expected = [0.1, 0.1, 0.1, 0.085355339, 0.05, 0.014644661, 0.0];
    follows(rate, &expected);
}

#[test]
fn stepped_schedule_drops_at_its_steps() {
    // 0.2 until step 2, ×0.5 from step 2, ×0.5 again from step 4.
    let rate = LearningRate::Stepped {
        base: 0.2,
        at: vec![2, 4],
        decay: 0.5,
    };
    follows(rate, &[0.2, 0.2, 0.1, 0.1, 0.05, 0.05]);
}

/// Checks `rate` against `expected` in closed form, and that plain SGD (gradient 1, its own
/// rate 7, which the schedule replaces) under [`Scheduled`] moves by exactly those rates.
fn follows(rate: LearningRate, expected: &[f64]) {
    for (t, e) in expected.iter().enumerate() {
        assert!((rate.at(t) - e).abs() < 1e-8, "step {t}: {} against {e}", rate.at(t));
    }
    let p = Var::new(&[0f64], &Device::Cpu).unwrap();
    let mut opt = Scheduled::new(Sgd::new(7.0, 0.0, 0.0), rate);
    let mut moved = 0.0;
    for (t, e) in expected.iter().enumerate().take(expected.len() - 1) {
        assert!((opt.learning_rate() - e).abs() < 1e-8);
        opt.step(&p, &Tensor::new(&[1.0f64], &Device::Cpu).unwrap()).unwrap();
        moved += e;
        let v = p.as_tensor().to_vec1::<f64>().unwrap()[0];
        assert!((v + moved).abs() < 1e-8, "{v} after step {t}");
    }
}
