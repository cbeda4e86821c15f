//! `extremal channels`.

use anyhow::{bail, Result};
use candle_core::Tensor;
use extremal_mask::channels::{channel_masks_at, ChannelSite};
use extremal_mask::{ChannelConfig, ChannelReport, Schedule};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::outdir::OutDir;
use crate::render;
use crate::ChannelsArgs;

fn report_json(model: &str, layer: &str, r: &ChannelReport) -> Value {
    let mut rank = vec![0usize; r.channels_total];
    for (i, &c) in r.ranking.iter().enumerate() {
        rank[c] = i + 1;
    }
    let channels: Vec<Value> = r
        .ranking
        .iter()
        .map(|&c| json!({"index": c, "mask": r.mask[c], "rank": rank[c]}))
        .collect();
    json!({
        "model": model,
        "layer": layer,
        "site": r.site,
        "channels_total": r.channels_total,
        "keep": r.keep,
        "target": r.target,
        "original_score": r.original_score,
        "kept_score": r.kept_score,
        "deleted_score": r.deleted_score,
        "soft_kept_score": r.soft_kept_score,
        "swaps": r.swaps,
        "baselines": {
            "top_activation": r.baselines.top_activation,
            "activation_x_gradient": r.baselines.activation_x_gradient,
        },
        "channels": channels,
    })
}

pub fn run(args: &ChannelsArgs) -> Result<()> {
    let mut out = args.out.as_deref().map(OutDir::prepare).transpose()?;
    let (model, x) = args.model.load_with_image(&args.input, args.keep_aspect, "channels")?;
    let schedule: Schedule = args.schedule.parse()?;
    let base = ChannelConfig {
        keep: 25,
        target: args.target,
        game: args.game.parse()?,
        schedule,
        iterations: args.iterations,
        refine: !args.no_refine && schedule == Schedule::Default,
        batch: 32,
    };
    let site = ChannelSite::new(&model, &x, &args.layer, args.target)?;
    let keeps: Vec<usize> = match (&args.sweep, args.keep) {
        (Some(s), _) => {
            let mut s = s.clone();
            s.sort();
            s.dedup();
            s
        }
        (None, k) => vec![k.unwrap_or(25)],
    };
    if let Some(&bad) = keeps.iter().find(|&&k| k == 0 || k > site.channels) {
        bail!(
            "--keep {bad} is not possible at `{}`: it has {} channels (keep 1…{})",
            site.site(),
            site.channels,
            site.channels
        );
    }
    let iterations = args.iterations.unwrap_or(schedule.iterations());
    let bar = ProgressBar::new((iterations * keeps.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise}")
            .unwrap()
            .progress_chars("=> "),
    );
    let mut reports = Vec::new();
    for (i, &keep) in keeps.iter().enumerate() {
        bar.set_message(format!("keep {keep}"));
        let cfg = ChannelConfig { keep, ..base.clone() };
        let r = channel_masks_at(&site, &cfg, &mut |t, _| bar.set_position((i * iterations + t) as u64))?;
        reports.push(r);
    }
    bar.finish_and_clear();

    let original = reports[0].original_score;
    let extremal = reports.iter().find(|r| r.kept_score >= original).map(|r| r.keep);
    // The reported run: the extremal keep when sweeping (else the largest), or the one keep.
    let chosen = match extremal {
        Some(k) => reports.iter().find(|r| r.keep == k).unwrap(),
        None => reports.last().unwrap(),
    };
    let mut obj = report_json(model.name(), &args.layer, chosen);
    if args.sweep.is_some() {
        obj["sweep"] = json!(reports
            .iter()
            .map(|r| json!({"keep": r.keep, "kept_score": r.kept_score}))
            .collect::<Vec<_>>());
        obj["extremal_keep"] = json!(extremal);
    }

    if let Some(dir) = out.as_mut() {
        // Channel saliency Σ_k m_k·Φ^k(x), upsampled to the input.
        let a = site.activation();
        if a.rank() == 4 {
            let m = Tensor::new(chosen.mask.as_slice(), a.device())?
                .to_dtype(a.dtype())?
                .reshape((1, a.dim(1)?, 1, 1))?;
            let v = a.broadcast_mul(&m)?.sum_keepdim(1)?;
            let (_, _, h, w) = x.dims4()?;
            let v = extremal_ops::resize_bilinear(&v, h, w)?.squeeze(0)?.squeeze(0)?;
            let rgb = model.preprocess().denormalize(&x)?.squeeze(0)?;
            render::save_png(&render::heat_overlay(&rgb, &v)?, &dir.path("saliency.png"))?;
        }
        if args.sweep.is_some() {
            let pts: Vec<(f64, f64)> = reports.iter().map(|r| (r.keep as f64, r.kept_score)).collect();
            render::save_png(&render::line_plot(&pts, original, true), &dir.path("sweep.png"))?;
        }
        // The computed result first: an interrupted rendering does not lose it.
        render::write_json(&dir.path("channels.json"), &obj)?;
        dir.commit()?;
        if args.render {
            let errors = crate::invert::render_sheet(
                &model,
                &x,
                &args.layer,
                chosen,
                &extremal_invert::InvertConfig {
                    iterations: args
                        .render_iterations
                        .unwrap_or(extremal_invert::InvertConfig::default().iterations),
                    seed: args.render_seed,
                    ..Default::default()
                },
                &dir.path("render.png"),
            )?;
            obj["render"] = json!({"file": "render.png", "relative_errors": errors});
            render::write_json(&dir.path("channels.json"), &obj)?;
            dir.commit()?;
        }
    }

    if args.json {
        crate::out(&format!("{obj}\n"));
    } else {
        let r = chosen;
        let mut text = format!(
            "{} at {} ({} channels), class {} ({}):\n  original score {:.4}\n  kept score     {:.4} with {} channels (soft top-{}: {:.4}, {} swaps)\n  baselines      top activation {:.4}, activation x gradient {:.4}\n  kept channels  {:?}\n",
            model.name(),
            r.site,
            r.channels_total,
            r.target,
            model.labels().get(r.target).cloned().unwrap_or_default(),
            r.original_score,
            r.kept_score,
            r.keep,
            r.keep,
            r.soft_kept_score,
            r.swaps,
            r.baselines.top_activation,
            r.baselines.activation_x_gradient,
            &r.ranking[..r.keep]
        );
        if args.sweep.is_some() {
            for rr in &reports {
                text.push_str(&format!("  keep {:>5}: {:.4}\n", rr.keep, rr.kept_score));
            }
            text.push_str(&format!(
                "  extremal keep: {}\n",
                extremal
                    .map(|k| k.to_string())
                    .unwrap_or("none reaches the original score".into())
            ));
        }
        crate::out(&text);
    }
    Ok(())
}
