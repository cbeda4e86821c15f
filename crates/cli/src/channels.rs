//! `extremal channels`.

use anyhow::Result;
use clap::Args;
use extremal_mask::{
    channel_sweep, explain_channels, ChannelConfig, ChannelSite, ExplainMethod, ExtremalConfig, Game, Schedule,
};
use serde_json::json;

use crate::args::{progress_bar, InputArgs, ModelArgs, OutputArgs};
use crate::outdir::OutDir;
use crate::render;

/// Channel-space extremal masks. `--out` writes channels.json, saliency.png, the kept channels'
/// conditional heatmaps (heatmaps.safetensors, channel-<k>.png and channels-sheet.png), (with
/// --sweep) sweep.png and (with --render) render.png.
#[derive(Args)]
pub(crate) struct ChannelsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: InputArgs,
    /// The site: a native name (`layer4.2.conv3`, `_blocks.10`) or a stage alias (`layer1`…`layer4`).
    #[arg(long)]
    layer: String,
    /// How many channels to keep (default 25 when no --sweep is given).
    #[arg(long, conflicts_with = "sweep")]
    keep: Option<usize>,
    /// Several keep values, comma separated: reports the kept score of each and the smallest
    /// keep that reaches the original score.
    #[arg(long, value_delimiter = ',')]
    sweep: Option<Vec<usize>>,
    /// Target class (default: the top-1 class).
    #[arg(long)]
    target: Option<usize>,
    /// Which part of the activation the reward judges: the kept channels, the removed ones, or both.
    #[arg(long, value_enum, default_value_t = Game::Preserve)]
    game: Game,
    /// Soft-mask iterations (default: 100 for the default schedule, 300 for the paper's).
    #[arg(long)]
    iterations: Option<usize>,
    /// default (Adam, near-binary ending, swap refinement) or paper (the paper's SGD schedule, no refinement).
    #[arg(long, value_enum, default_value_t = Schedule::Default)]
    schedule: Schedule,
    /// Skip the swap refinement of the hard set.
    #[arg(long)]
    no_refine: bool,
    #[command(flatten)]
    output: OutputArgs,
    /// Also render render.png: the image and the feature inversions of the full activation,
    /// of the kept channels and of the top channels one by one (needs --out).
    #[arg(long, requires = "out")]
    render: bool,
    /// Iterations of the inversions of --render (default: as `extremal invert`).
    #[arg(long, requires = "render")]
    render_iterations: Option<usize>,
    /// Seed of the inversions of --render.
    #[arg(long, default_value_t = 0, requires = "render")]
    render_seed: u64,
    /// With --out: map where the top N kept channels draw their contribution (default: every
    /// kept channel, up to 32; 0: none).
    #[arg(long, requires = "out")]
    explain: Option<usize>,
    /// How the maps of --explain are made: gradient (conditional gradient × input, Concept
    /// Relevance Propagation's conditional attribution; seconds) or extremal (an image-space
    /// extremal perturbation of each channel's contribution, area 0.1; minutes per channel).
    #[arg(long, value_enum, default_value_t = ExplainMethod::Gradient)]
    explain_method: ExplainMethod,
    /// Iterations of `--explain-method extremal`.
    #[arg(long, default_value_t = 300)]
    explain_iterations: usize,
}

pub(crate) fn run(args: &ChannelsArgs) -> Result<()> {
    let mut out = args.output.out.as_deref().map(OutDir::prepare).transpose()?;
    let (model, x) = args.model.load_with_image(&args.input, "channels")?;
    let cfg = ChannelConfig {
        game: args.game,
        schedule: args.schedule,
        iterations: args.iterations,
        refine: !args.no_refine && args.schedule == Schedule::Default,
        ..ChannelConfig::default()
    };
    let site = ChannelSite::new(&model, &x, &args.layer, args.target)?;
    let keeps = args
        .sweep
        .clone()
        .unwrap_or_else(|| vec![args.keep.unwrap_or(cfg.keep)]);
    let iterations = args.iterations.unwrap_or(args.schedule.iterations());
    let bar = progress_bar((iterations * keeps.len()) as u64, "{msg}", "");
    let sweep = channel_sweep(&site, &keeps, &cfg, &mut |i, keep, t, _| {
        bar.set_message(format!("keep {keep}"));
        bar.set_position((i * iterations + t) as u64);
    });
    bar.finish_and_clear();
    let sweep = sweep?;
    let chosen = sweep.chosen();
    let original = chosen.original_score;

    let mut obj = serde_json::to_value(chosen)?;
    obj["model"] = json!(model.name());
    obj["layer"] = json!(args.layer);
    if args.sweep.is_some() {
        obj["sweep"] = json!(sweep
            .reports
            .iter()
            .map(|r| json!({"keep": r.keep, "kept_score": r.kept_score}))
            .collect::<Vec<_>>());
        obj["extremal_keep"] = json!(sweep.extremal_keep);
    }

    if let Some(dir) = out.as_mut() {
        let (_, _, h, w) = x.dims4()?;
        if let Some(v) = site.saliency(&chosen.mask, h, w)? {
            let rgb = model.preprocess().denormalise(&x)?.squeeze(0)?;
            render::save_png(&render::heat_overlay(&rgb, &v)?, &dir.path("saliency.png"))?;
        }
        if args.sweep.is_some() {
            let pts: Vec<(f64, f64)> = sweep.reports.iter().map(|r| (r.keep as f64, r.kept_score)).collect();
            render::save_png(&render::line_plot(&pts, original, true), &dir.path("sweep.png"))?;
        }
        // The computed result first: an interrupted rendering does not lose it.
        render::write_json(&dir.path("channels.json"), &obj)?;
        dir.commit()?;
        let explained: Vec<usize> = chosen
            .kept()
            .iter()
            .copied()
            .take(args.explain.unwrap_or(chosen.keep.min(32)))
            .collect();
        let mut rows: Vec<(usize, image::RgbImage)> = Vec::new();
        if !explained.is_empty() {
            let cfg = ExtremalConfig {
                areas: vec![0.1],
                iterations: args.explain_iterations,
                ..Default::default()
            };
            let total = match args.explain_method {
                ExplainMethod::Gradient => explained.len(),
                ExplainMethod::Extremal => explained.len() * cfg.iterations,
            };
            let bar = progress_bar(total as u64, "explain", " (eta {eta})");
            let maps = explain_channels(&site, chosen, &explained, args.explain_method, &cfg, &mut |i, t| {
                bar.set_position((i * cfg.iterations + t + 1) as u64)
            });
            bar.finish_and_clear();
            let maps = maps?;
            render::save_tensor(&maps, "heatmaps", &dir.path("heatmaps.safetensors"))?;
            let rgb = model.preprocess().denormalise(&x)?.squeeze(0)?;
            let (_, _, h, w) = x.dims4()?;
            for (i, &k) in explained.iter().enumerate() {
                // Where the channel draws support for the class: the positive part, blurred
                // as TorchRay's benchmark blurs gradient maps (σ = 0.02 of the larger side).
                let heat = maps.narrow(0, i, 1)?.relu()?;
                let heat = match args.explain_method {
                    ExplainMethod::Gradient => {
                        extremal_ops::gaussian_blur(&heat, 0.02 * h.max(w) as f64, extremal_ops::Border::Replicate)?
                    }
                    ExplainMethod::Extremal => heat,
                };
                let heat = heat.squeeze(0)?.squeeze(0)?;
                let overlay = render::heat_overlay(&rgb, &heat)?;
                render::save_png(&overlay, &dir.path(&format!("channel-{k}.png")))?;
                rows.push((k, overlay));
            }
            obj["explained"] = json!({
                "channels": explained,
                "method": args.explain_method,
                "file": "heatmaps.safetensors",
            });
            render::write_json(&dir.path("channels.json"), &obj)?;
            save_channel_sheet(chosen, &rows, &[], &dir.path("channels-sheet.png"))?;
            dir.commit()?;
        }
        if args.render {
            let rendered = crate::invert::render_sheet(
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
            obj["render"] = json!({"file": "render.png", "relative_errors": rendered.errors});
            render::write_json(&dir.path("channels.json"), &obj)?;
            if !rows.is_empty() {
                save_channel_sheet(chosen, &rows, &rendered.singles, &dir.path("channels-sheet.png"))?;
            }
            dir.commit()?;
        }
    }

    if args.output.json {
        crate::out(&format!("{obj}\n"));
    } else {
        let r = chosen;
        let mut text = format!(
            "{} at {} ({} channels), class {} ({}):\n  original score {:.4}\n  kept score     {:.4} with {} channels (soft top-{}: {:.4}, {} swaps)\n  baselines      top activation {:.4}, activation x gradient {:.4}\n  kept channels  contribution (Shapley share of what the set keeps) and drop (without it alone)\n",
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
        );
        for row in r.kept().chunks(4) {
            let cells: Vec<String> = row
                .iter()
                .map(|&k| {
                    let drop = r.drops[k].unwrap_or(f64::NAN);
                    format!("{k:>5} {:>+8.4} ({drop:>+8.4})", r.contributions[k])
                })
                .collect();
            text.push_str(&format!("  {}\n", cells.join("  ")));
        }
        let sum: f64 = r.kept().iter().map(|&k| r.contributions[k]).sum();
        text.push_str(&format!(
            "  contributions  sum {:.4}; kept score - score with none kept {:.4}\n",
            sum,
            r.kept_score - r.empty_score
        ));
        if args.sweep.is_some() {
            for rr in &sweep.reports {
                text.push_str(&format!("  keep {:>5}: {:.4}\n", rr.keep, rr.kept_score));
            }
            text.push_str(&format!(
                "  extremal keep: {}\n",
                sweep
                    .extremal_keep
                    .map(|k| k.to_string())
                    .unwrap_or("none reaches the original score".into())
            ));
        }
        crate::out(&text);
    }
    Ok(())
}

/// `channels-sheet.png`: one row per explained kept channel — its contribution and heatmap,
/// and its inversion where `--render` made one.
fn save_channel_sheet(
    report: &extremal_mask::ChannelReport,
    rows: &[(usize, image::RgbImage)],
    inversions: &[(usize, image::RgbImage)],
    path: &std::path::Path,
) -> Result<()> {
    let columns = if inversions.is_empty() {
        rows.len().clamp(1, 5)
    } else {
        2
    };
    let mut tiles = Vec::new();
    for (k, overlay) in rows {
        tiles.push((overlay.clone(), format!("ch {k} {:+.3}", report.contributions[*k])));
        if columns == 2 {
            match inversions.iter().find(|(j, _)| j == k) {
                Some((_, p)) => tiles.push((p.clone(), format!("ch {k} inverted"))),
                None => tiles.push((image::RgbImage::new(overlay.width(), overlay.height()), String::new())),
            }
        }
    }
    render::save_png(&render::sheet(&tiles, columns), path)
}
