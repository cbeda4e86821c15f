//! Times `channels` on one site with the model already loaded (the same work
//! `scripts/channels_speed.py` times in PyTorch: from the input tensor to the kept channels),
//! and with `--greedy` greedy forward selection too, the baseline the search must beat. With
//! `--local-check`, every single swap of the found set (one kept channel out, one other in) is
//! scored, and the number that would raise the kept score is printed: 0 means the set is a
//! local optimum of the whole swap neighbourhood, not only of the refinement's 8 × 8 window.
//! `--batch-time` prints the cost of a scored set by batch size, and `--shapley-check N` how
//! far the sampled Shapley values are from `N` permutations (see the README).
//!
//! ```text
//! cargo run --release --example channels_speed -- MODEL WEIGHTS|- INPUT LAYER KEEP [--greedy] [--local-check]
//!     [--batch-time] [--shapley-check N]
//! ```
//!
//! `WEIGHTS` `-` takes the model's own pretrained weights; `INPUT` is an image or a
//! `.safetensors` input. Prints one JSON object.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use extremal::mask::{ChannelConfig, ChannelSite, channel_masks_at, channels::contributions, greedy_selection};
use extremal::models::{Model, load_input};
use extremal::ops::random::SeededRng;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let shapley_check: Option<usize> = a
        .iter()
        .position(|f| f == "--shapley-check")
        .map(|i| a.get(i + 1).map(|n| n.parse()).unwrap_or(Ok(0)))
        .transpose()?;
    let flags: Vec<&String> = a[6.min(a.len())..]
        .iter()
        .filter(|f| f.parse::<usize>().is_err())
        .collect();
    if a.len() < 6
        || flags
            .iter()
            .any(|f| !["--greedy", "--local-check", "--shapley-check", "--batch-time"].contains(&f.as_str()))
    {
        anyhow::bail!(
            "usage: channels_speed MODEL WEIGHTS|- INPUT LAYER KEEP [--greedy] [--local-check] [--batch-time] [--shapley-check N]"
        );
    }
    let weights = (a[2] != "-").then(|| Path::new(&a[2]));
    let model = Model::load(a[1].parse()?, weights, DType::F32, &Device::Cpu)?;
    let x = load_input(Path::new(&a[3]), model.preprocess(), false, DType::F32, &Device::Cpu)?;
    let mut cfg = ChannelConfig {
        keep: a[5].parse()?,
        ..Default::default()
    };
    if let Ok(n) = std::env::var("ITERATIONS") {
        cfg.iterations = Some(n.parse()?);
    }
    let t = Instant::now();
    let site = ChannelSite::new(&model, &x, &a[4], None)?;
    let r = channel_masks_at(&site, &cfg, &mut |_, _| {})?;
    let secs = t.elapsed().as_secs_f64();
    let mut out = serde_json::json!({
        "seconds": secs,
        "kept_score": r.kept_score,
        "original_score": r.original_score,
        "swaps": r.swaps,
        "timings": r.timings,
    });
    if flags.iter().any(|f| *f == "--local-check") {
        let kept = r.kept();
        let others: Vec<usize> = (0..site.channels).filter(|c| !kept.contains(c)).collect();
        let swaps: Vec<Vec<usize>> = kept
            .iter()
            .flat_map(|&o| {
                others.iter().map(move |&i| {
                    let mut s: Vec<usize> = kept.iter().copied().filter(|&k| k != o).collect();
                    s.push(i);
                    s
                })
            })
            .collect();
        let scores = site.hard_scores(&swaps, true, cfg.batch)?;
        let better = scores.iter().filter(|&&s| s > r.kept_score).count();
        let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        out["swaps_scored"] = swaps.len().into();
        out["swaps_improving"] = better.into();
        out["best_swap_score"] = best.into();
    }
    if flags.iter().any(|f| *f == "--greedy") {
        let t = Instant::now();
        let (_, score) = greedy_selection(&site, cfg.keep, cfg.batch)?;
        out["greedy_score"] = score.into();
        out["greedy_seconds"] = t.elapsed().as_secs_f64().into();
    }
    if flags.iter().any(|f| *f == "--batch-time") {
        // The cost of a scored set by batch size: 192 seeded random sets of `keep` channels.
        let mut rng = SeededRng::new(7);
        let sets: Vec<Vec<usize>> = (0..192)
            .map(|_| {
                let mut all: Vec<usize> = (0..site.channels).collect();
                rng.shuffle(&mut all);
                all.truncate(cfg.keep);
                all
            })
            .collect();
        let mut per_set = serde_json::Map::new();
        for batch in [4usize, 8, 16, 24, 32, 48, 64] {
            let t = Instant::now();
            site.hard_scores(&sets, true, batch)?;
            per_set.insert(batch.to_string(), (t.elapsed().as_secs_f64() * 1e3 / 192.0).into());
        }
        out["ms_per_set_by_batch"] = per_set.into();
    }
    if let Some(n) = shapley_check {
        out["shapley_check"] = shapley_check_json(&site, r.kept(), r.kept_score, cfg.batch, n)?;
    }
    println!("{out}");
    Ok(())
}

/// How far sampled Shapley values of the kept channels are from a long run: `n` seeded
/// permutations in antithetic pairs (every prefix scored), cut into disjoint runs of 4, 8, 16
/// and 32 permutations; each run's estimate is compared with the mean of all the others.
/// Errors are RMS over the kept channels, relative to `s(S) − s(∅)`; also the extremal's own
/// 16-permutation values (`contributions`) against the mean of all `n`.
fn shapley_check_json(
    site: &ChannelSite,
    kept: &[usize],
    kept_score: f64,
    batch: usize,
    n: usize,
) -> anyhow::Result<serde_json::Value> {
    let k = kept.len();
    let n = n.max(64) / 2 * 2;
    let mut rng = SeededRng::new(0x0123_4567);
    let mut orders: Vec<Vec<usize>> = Vec::with_capacity(n);
    while orders.len() < n {
        let mut o: Vec<usize> = (0..k).collect();
        rng.shuffle(&mut o);
        orders.push(o.iter().rev().copied().collect());
        orders.push(o);
    }
    let prefixes: Vec<Vec<usize>> = orders
        .iter()
        .flat_map(|o| (1..k).map(move |len| o[..len].iter().map(|&i| kept[i]).collect()))
        .collect();
    let v = site.hard_scores(&prefixes, true, batch)?;
    // The report's own values, with the drops and the empty set's score they come with.
    let ours = contributions(site, kept, kept_score, batch)?;
    let empty = ours.empty_score;
    // Marginal gains per permutation.
    let gains: Vec<Vec<f64>> = orders
        .iter()
        .enumerate()
        .map(|(p, o)| {
            let mut g = vec![0.0; k];
            let mut before = empty;
            for (len, &i) in o.iter().enumerate() {
                let after = if len + 1 == k { kept_score } else { v[p * (k - 1) + len] };
                g[i] = after - before;
                before = after;
            }
            g
        })
        .collect();
    let mean = |rows: &[&Vec<f64>]| -> Vec<f64> {
        (0..k)
            .map(|i| rows.iter().map(|r| r[i]).sum::<f64>() / rows.len() as f64)
            .collect()
    };
    let span = (kept_score - empty).abs().max(1e-12);
    let rms =
        |a: &[f64], b: &[f64]| (a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / k as f64).sqrt() / span;
    let mut runs = serde_json::Map::new();
    for size in [4usize, 8, 16, 32] {
        let chunks = n / size;
        let errors: Vec<f64> = (0..chunks)
            .map(|c| {
                let inside: Vec<&Vec<f64>> = gains[c * size..(c + 1) * size].iter().collect();
                let outside: Vec<&Vec<f64>> = gains
                    .iter()
                    .enumerate()
                    .filter(|(p, _)| p / size != c)
                    .map(|(_, g)| g)
                    .collect();
                rms(&mean(&inside), &mean(&outside))
            })
            .collect();
        let e = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
        runs.insert(size.to_string(), serde_json::json!({"runs": chunks, "rms_error": e}));
    }
    let all: Vec<&Vec<f64>> = gains.iter().collect();
    let reference = mean(&all);
    let drops: Vec<f64> = kept.iter().map(|&c| ours.drops[c].expect("a kept channel")).collect();
    let ours: Vec<f64> = kept.iter().map(|&c| ours.values[c]).collect();
    // Paired KernelSHAP (Lundberg & Lee 2017; paired sampling, Covert & Lee 2021): coalitions
    // drawn from the Shapley kernel's size distribution with their complements, the values the
    // constrained least-squares fit; 8 seeded runs per budget of scored sets.
    let mut kernel = serde_json::Map::new();
    for budget in [96usize, 192, 384] {
        let errors: Vec<f64> = (0..8u64)
            .map(|seed| -> anyhow::Result<f64> {
                let phi = kernel_shap(site, kept, kept_score, empty, batch, budget, seed)?;
                Ok(rms(&phi, &reference))
            })
            .collect::<anyhow::Result<_>>()?;
        let e = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
        kernel.insert(budget.to_string(), serde_json::json!({"runs": 8, "rms_error": e}));
    }
    Ok(serde_json::json!({
        "kernel_shap_by_budget": kernel,
        "permutations": n,
        "span": kept_score - empty,
        "by_run_length": runs,
        "contributions_rms_error": rms(&ours, &reference),
        "drops_rms_error": rms(&drops, &reference),
        "reference": reference,
    }))
}

/// Paired KernelSHAP with `budget` scored coalitions (half drawn, half their complements).
fn kernel_shap(
    site: &ChannelSite,
    kept: &[usize],
    full: f64,
    empty: f64,
    batch: usize,
    budget: usize,
    seed: u64,
) -> anyhow::Result<Vec<f64>> {
    let k = kept.len();
    let mut rng = SeededRng::new(0x9e37_79b9 ^ seed);
    let weights: Vec<f64> = (1..k).map(|s| 1.0 / (s * (k - s)) as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut coalitions: Vec<Vec<bool>> = Vec::with_capacity(budget);
    while coalitions.len() + 1 < budget {
        let mut u = rng.uniform() * total;
        let mut size = k - 1;
        for (s, w) in weights.iter().enumerate() {
            if u < *w {
                size = s + 1;
                break;
            }
            u -= w;
        }
        let mut order: Vec<usize> = (0..k).collect();
        rng.shuffle(&mut order);
        let mut z = vec![false; k];
        order[..size].iter().for_each(|&i| z[i] = true);
        coalitions.push(z.iter().map(|b| !b).collect());
        coalitions.push(z);
    }
    let sets: Vec<Vec<usize>> = coalitions
        .iter()
        .map(|z| (0..k).filter(|&i| z[i]).map(|i| kept[i]).collect())
        .collect();
    let v = site.hard_scores(&sets, true, batch)?;
    let n = coalitions.len() as f64;
    let mut a = vec![vec![0.0; k]; k];
    let mut b = vec![0.0; k];
    for (z, v) in coalitions.iter().zip(&v) {
        for i in 0..k {
            if z[i] {
                b[i] += (v - empty) / n;
                for j in 0..k {
                    if z[j] {
                        a[i][j] += 1.0 / n;
                    }
                }
            }
        }
    }
    let ainv_b = solve(&a, &b);
    let ainv_1 = solve(&a, &vec![1.0; k]);
    let nu = (ainv_b.iter().sum::<f64>() - (full - empty)) / ainv_1.iter().sum::<f64>();
    Ok((0..k).map(|i| ainv_b[i] - nu * ainv_1[i]).collect())
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting.
fn solve(a: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .zip(b)
        .map(|(r, &v)| r.iter().copied().chain([v]).collect())
        .collect();
    for c in 0..n {
        let p = (c..n).max_by(|&x, &y| m[x][c].abs().total_cmp(&m[y][c].abs())).unwrap();
        m.swap(c, p);
        let pivot = m[c].clone();
        for (r, row) in m.iter_mut().enumerate() {
            if r != c {
                let f = row[c] / pivot[c];
                for (x, q) in row[c..].iter_mut().zip(&pivot[c..]) {
                    *x -= f * q;
                }
            }
        }
    }
    (0..n).map(|i| m[i][n] / m[i][i]).collect()
}
