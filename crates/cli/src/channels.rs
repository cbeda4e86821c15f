//! `extremal channels`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use extremal_eval::{read_records, Journal, Shard};
use extremal_mask::{channel_masks_at, class_tables, ChannelRecord, ClassTable};
use extremal_mask::{
    channel_sweep, explain_channels, ChannelConfig, ChannelSite, ExplainMethod, ExtremalConfig, Game, Schedule,
};
use extremal_models::Model;
use serde_json::json;

use crate::args::{progress_bar, InputArgs, ModelArgs, OutputArgs};
use crate::outdir::OutDir;
use crate::render;

/// Channel-space extremal masks. `--out` writes channels.json, saliency.png, the kept channels'
/// conditional heatmaps (heatmaps.safetensors, channel-<k>.png and channels-sheet.png), (with
/// --sweep) sweep.png and (with --render) render.png. Given a folder, it runs every image
/// (found recursively) with the model loaded once: `--out DIR` gets results.jsonl (one record
/// per image; a rerun skips the images done) and classes.json (per class, how often each
/// channel is kept, its mean contribution, and the class-level set against the per-image sets
/// and the heuristics); `--shard K/N` splits the images, `channels merge` tabulates shards.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct ChannelsArgs {
    #[command(subcommand)]
    command: Option<ChannelsCommand>,
    #[command(flatten)]
    model: ModelArgs,
    /// An image file (PNG, JPEG, …), a .safetensors file whose tensor `input` is used as is, or
    /// a folder of images. (Not `InputArgs`: with the `merge` subcommand it may be absent.)
    #[arg(required = true)]
    input: Option<PathBuf>,
    /// Resize the shorter side to the model's input size instead of the whole image to a square.
    #[arg(long)]
    keep_aspect: bool,
    /// The site: a native name (`layer4.2.conv3`, `_blocks.10`) or a stage alias (`layer1`…`layer4`).
    #[arg(long, required = true)]
    layer: Option<String>,
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
    /// A folder run: do share K of N of the images (K from 0; images i with i mod N = K).
    #[arg(long, default_value = "0/1")]
    shard: String,
}

#[derive(clap::Subcommand)]
enum ChannelsCommand {
    /// Tabulate the records of folder runs (their shards' results.jsonl) into classes.json:
    /// the images are read again (from --images, with the runs' --model, preprocessing and
    /// --keep-aspect) to score the class-level sets.
    Merge {
        /// The records files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The folder the runs read.
        #[arg(long)]
        images: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// As the runs: resize the shorter side instead of the whole image.
        #[arg(long)]
        keep_aspect: bool,
        /// Where to write the tables (JSON).
        #[arg(long)]
        out: PathBuf,
        /// Print the tables as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(args: &ChannelsArgs) -> Result<()> {
    if let Some(ChannelsCommand::Merge {
        files,
        images,
        model,
        keep_aspect,
        out,
        json,
    }) = &args.command
    {
        let mut records = Vec::new();
        for f in files {
            records.extend(read_records::<ChannelRecord>(f)?);
        }
        let model_loaded = model.load()?;
        return write_tables(&records, images, model, &model_loaded, *keep_aspect, out, *json);
    }
    let (Some(input), Some(layer)) = (&args.input, &args.layer) else {
        bail!("channels needs an INPUT and --layer L (or: channels merge FILE… --images DIR --out table.json)");
    };
    if input.is_dir() {
        return run_folder(args, input, layer);
    }
    let mut out = args.output.out.as_deref().map(OutDir::prepare).transpose()?;
    let input = InputArgs {
        input: input.clone(),
        keep_aspect: args.keep_aspect,
    };
    let (model, x) = args.model.load_with_image(&input, "channels")?;
    let cfg = ChannelConfig {
        game: args.game,
        schedule: args.schedule,
        iterations: args.iterations,
        refine: !args.no_refine && args.schedule == Schedule::Default,
        ..ChannelConfig::default()
    };
    let site = ChannelSite::new(&model, &x, layer, args.target)?;
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
    obj["layer"] = json!(layer);
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
            render::save_tensors_in(dir, &maps, "heatmaps", "heatmaps", args.output.npy)?;
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
                layer,
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

/// `channels DIR`: every image of the folder (of this shard), one record each in
/// `DIR/results.jsonl`; with the whole folder done in one shard, the class tables too.
fn run_folder(args: &ChannelsArgs, dir: &Path, layer: &str) -> Result<()> {
    let Some(out) = &args.output.out else {
        bail!("a folder run needs --out DIR (its records go to DIR/results.jsonl)");
    };
    if args.sweep.is_some() || args.render {
        bail!("--sweep and --render take one image; a folder run keeps --keep channels of each");
    }
    let shard: Shard = args.shard.parse()?;
    let images = extremal_models::image_files(dir)?;
    if images.is_empty() {
        bail!(
            "{}: no images (png, jpg, jpeg, gif, bmp, webp) in this folder",
            dir.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut journal = Journal::<ChannelRecord>::open(&out.join("results.jsonl"))?;
    let done: std::collections::HashSet<String> = journal.done.iter().map(|r| r.image.clone()).collect();
    let name = |p: &Path| p.strip_prefix(dir).unwrap_or(p).to_string_lossy().replace('\\', "/");
    let todo: Vec<&PathBuf> = images
        .iter()
        .enumerate()
        .filter(|(i, p)| i % shard.count == shard.index && !done.contains(&name(p)))
        .map(|(_, p)| p)
        .collect();
    let model = args.model.load()?;
    let cfg = ChannelConfig {
        keep: args.keep.unwrap_or(ChannelConfig::default().keep),
        game: args.game,
        schedule: args.schedule,
        iterations: args.iterations,
        refine: !args.no_refine && args.schedule == Schedule::Default,
        ..ChannelConfig::default()
    };
    let bar = progress_bar(todo.len() as u64, "channels", " images (eta {eta}) {msg}");
    for path in todo {
        bar.set_message(name(path));
        let x = args.model.image(&model, path, args.keep_aspect)?;
        let site = ChannelSite::new(&model, &x, layer, args.target)?;
        let report = channel_masks_at(&site, &cfg, &mut |_, _| {})?;
        journal.append(&ChannelRecord::new(&name(path), &site, &report)?)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let records = read_records::<ChannelRecord>(&out.join("results.jsonl"))?;
    let mine = images
        .iter()
        .enumerate()
        .filter(|(i, _)| i % shard.count == shard.index)
        .count();
    if shard.count > 1 {
        crate::out(&format!(
            "{} of {} images of shard {}/{} done in {}; `extremal channels merge` tabulates the shards\n",
            records.len(),
            mine,
            shard.index,
            shard.count,
            out.join("results.jsonl").display()
        ));
        return Ok(());
    }
    write_tables(
        &records,
        dir,
        &args.model,
        &model,
        args.keep_aspect,
        &out.join("classes.json"),
        args.output.json,
    )
}

/// The class tables of `records` (images under `images`), written to `out` and printed.
fn write_tables(
    records: &[ChannelRecord],
    images: &Path,
    args: &ModelArgs,
    model: &Model,
    keep_aspect: bool,
    out: &Path,
    json: bool,
) -> Result<()> {
    let bar = progress_bar(records.len() as u64, "class sets", "");
    let tables = class_tables(records, &mut |r, sets| {
        let path = images.join(&r.image);
        let x = args
            .image(model, &path, keep_aspect)
            .map_err(|e| extremal_mask::Error::Invalid(format!("{}: {e}", path.display())))?;
        let site = ChannelSite::new(model, &x, &r.site, Some(r.target))?;
        bar.inc(1);
        site.hard_scores(sets, true, 32)
    });
    bar.finish_and_clear();
    let tables = tables?;
    let value = json!({"model": model.name(), "classes": tables});
    crate::render::write_atomic(out, format!("{}\n", serde_json::to_string_pretty(&value)?).as_bytes())?;
    if json {
        crate::out(&format!("{value}\n"));
    } else {
        crate::out(&tables_text(model, &tables));
    }
    Ok(())
}

fn tables_text(model: &Model, tables: &[ClassTable]) -> String {
    let mut text = String::new();
    for t in tables {
        text.push_str(&format!(
            "class {} ({}) at {}, {} images, keep {}:\n  mean original score {:.4}\n  mean kept score: own sets {:.4}, class set {:.4}, top activation {:.4}, activation x gradient {:.4}\n  class set      {:?}\n  most kept      ",
            t.target,
            model.labels().get(t.target).cloned().unwrap_or_default(),
            t.site,
            t.images,
            t.keep,
            t.mean_original_score,
            t.mean_image_set_score,
            t.mean_class_set_score,
            t.mean_top_activation_score,
            t.mean_activation_x_gradient_score,
            t.class_set
        ));
        let top: Vec<String> = t
            .channels
            .iter()
            .take(8)
            .map(|c| format!("{} ({}/{}, {:+.3})", c.index, c.kept, t.images, c.mean_contribution))
            .collect();
        text.push_str(&top.join(", "));
        text.push('\n');
    }
    text
}
