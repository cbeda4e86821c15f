//! `extremal channels`.

use anyhow::Result;
use clap::Args;
use extremal_mask::{channel_sweep, ChannelConfig, ChannelSite, Game, Schedule};
use serde_json::json;

use crate::args::{progress_bar, InputArgs, ModelArgs, OutputArgs};
use crate::outdir::OutDir;
use crate::render;

/// Channel-space extremal masks. `--out` writes channels.json, saliency.png, (with --sweep)
/// sweep.png and (with --render) render.png.
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

    if args.output.json {
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
            r.kept()
        );
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
