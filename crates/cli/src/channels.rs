//! `extremal channels`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use extremal_eval::folder::image_folder;
use extremal_eval::{read_records, ImageSet};
use extremal_mask::{channel_masks_at, class_tables, ChannelRecord, ClassTable};
use extremal_mask::{
    channel_sweep, explain_channels, ChannelConfig, ChannelSite, ExplainMethod, ExtremalConfig, Game, Schedule, Starts,
};
use extremal_models::Model;
use serde_json::json;

use crate::args::{photograph, progress_bar, InputsArgs, ModelArgs, OutputArgs, PictureArgs};
use crate::folder::{self, Folder};
use crate::outdir::OutDir;
use crate::render::{self, ValueRange};

/// Channel-space extremal masks. `--out` writes channels.json, saliency.png, the kept channels'
/// conditional heatmaps (heatmaps.safetensors, channel-<k>.png and channels-sheet.png), (with
/// --sweep) sweep.png and (with --render) render.png. Given a folder, it runs every image
/// (found recursively) with the model loaded once: `--out DIR` gets each image's channels.json
/// in DIR/<its path>/, results.jsonl (one record per image; a rerun skips the images done) and
/// classes.json (per class, how often each
/// channel is kept, its mean contribution, and the class-level set against the per-image sets
/// and the heuristics); `--shard K/N` splits the images, `channels merge` tabulates shards.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct ChannelsArgs {
    #[command(subcommand)]
    command: Option<ChannelsCommand>,
    #[command(flatten)]
    model: ModelArgs,
    /// An image file (PNG, JPEG, …), a .safetensors file whose tensor `input` is used as is;
    /// several, or folders of images: a folder run. (Not `InputsArgs`: with the `merge`
    /// subcommand they may be absent, and channels does not batch.)
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
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
    /// Where the swap refinement starts: all (a local search from each of the soft mask's set
    /// and the two baselines' sets, the best kept) or best (the best-scoring of them only:
    /// faster, for folders of many images).
    #[arg(long, value_enum, default_value_t = Starts::All)]
    starts: Starts,
    #[command(flatten)]
    pictures: PictureArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Also render render.png: the image and the feature inversions of the full activation,
    /// of the kept channels and of the top channels one by one (needs --out).
    #[arg(long, requires = "out")]
    render: bool,
    /// Iterations of the inversions of --render (default 200).
    #[arg(long, requires = "render")]
    render_iterations: Option<usize>,
    /// Seed of the inversions of --render.
    #[arg(long, default_value_t = 0, requires = "render")]
    render_seed: u64,
    /// What the inversions of --render ask of the channels outside the inverted set: zero (the
    /// paper's inversion of the masked activation: they must stay silent, so the set's
    /// structure appears where it fires) or free (only the set is matched).
    #[arg(long, value_enum, default_value_t = extremal_invert::Others::Zero, requires = "render")]
    others: extremal_invert::Others,
    /// The image parameterisation of the inversions of --render: fourier (the default: the
    /// visualization's decorrelated Fourier image, whose renders follow where a channel fires
    /// most closely, see the render_correlation example) or pixel.
    #[arg(long, value_enum, default_value_t = extremal_invert::InvertConfig::channel_render().parameterisation, requires = "render", alias = "render-parametrization")]
    render_parameterisation: extremal_invert::Parameterisation,
    /// Add a column of feature visualizations (`extremal visualize`) of the explained kept
    /// channels to channels-sheet.png.
    #[arg(long, requires = "out")]
    visualize: bool,
    /// Iterations of the visualizations of --visualize.
    #[arg(long, default_value_t = 512, requires = "visualize")]
    visualize_iterations: usize,
    /// Add a column of dataset exemplars to channels-sheet.png: the --out folder of an
    /// `extremal exemplars` run at the same layer (its exemplars/channel-<k>.png).
    #[arg(long, value_name = "DIR", requires = "out")]
    exemplars: Option<PathBuf>,
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
    // The picture options are checked before any long work.
    args.pictures.style(ValueRange::Data)?;
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
        let set = ImageSet::from_inputs(std::slice::from_ref(images))?;
        let model_loaded = model.load()?;
        return write_tables(&records, &set, model, &model_loaded, *keep_aspect, out, *json);
    }
    let Some(layer) = &args.layer else {
        bail!("channels needs an INPUT and --layer L (or: channels merge FILE… --images DIR --out table.json)");
    };
    let inputs = InputsArgs {
        inputs: args.inputs.clone(),
        keep_aspect: args.keep_aspect,
        shard: args.shard.clone(),
        batch: 1,
    };
    let Some(input) = inputs.single() else {
        return run_folder(args, &inputs, layer);
    };
    let mut out = args.output.out.as_deref().map(OutDir::prepare).transpose()?;
    let (model, x) = args.model.load_with_image(&input, "channels")?;
    let photo = photograph(&args.model, &model, &input.input, &x)?;
    let style = args.pictures.style(ValueRange::Data)?;
    let cfg = ChannelConfig {
        game: args.game,
        schedule: args.schedule,
        iterations: args.iterations,
        refine: !args.no_refine && args.schedule == Schedule::Default,
        starts: args.starts,
        ..ChannelConfig::default()
    };
    let site = ChannelSite::new(&model, &x, layer, args.target)?;
    let keeps = args
        .sweep
        .clone()
        .unwrap_or_else(|| vec![args.keep.unwrap_or(cfg.keep)]);
    let iterations = args.iterations.unwrap_or(args.schedule.iterations());
    let bar = progress_bar(
        iterations as u64,
        "soft masks",
        " (then the refinement and contributions)",
    );
    let sweep = channel_sweep(&site, &keeps, &cfg, &mut |t, _| bar.set_position(t as u64));
    bar.finish_and_clear();
    let sweep = sweep?;
    let chosen = &sweep.chosen;
    let original = chosen.original_score;

    let mut obj = serde_json::to_value(chosen)?;
    obj["model"] = json!(model.name());
    obj["layer"] = json!(layer);
    if args.sweep.is_some() {
        obj["sweep"] = json!(sweep
            .points
            .iter()
            .map(|r| {
                json!({
                    "keep": r.keep,
                    "kept_score": r.kept_score,
                    "kept": r.kept,
                    "deleted_score": r.deleted_score,
                    "soft_kept_score": r.soft_kept_score,
                    "swaps": r.swaps,
                })
            })
            .collect::<Vec<_>>());
        obj["extremal_keep"] = json!(sweep.extremal_keep);
    }

    if let Some(dir) = out.as_mut() {
        let (_, _, h, w) = x.dims4()?;
        if let Some(v) = site.saliency(&chosen.mask, h, w)? {
            render::save_png(&render::overlay(&photo, &v, &style)?, &dir.path("saliency.png"))?;
        }
        if args.sweep.is_some() {
            let pts: Vec<(f64, f64)> = sweep.points.iter().map(|r| (r.keep as f64, r.kept_score)).collect();
            let plot = render::LinePlot {
                points: &pts,
                reference: Some((original, "original score")),
                log_x: true,
                x_label: "channels kept",
                y_label: "score with the kept channels only",
            };
            render::save_png(&render::line_plot(&plot), &dir.path("sweep.png"))?;
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
        let mut columns = Columns::default();
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
                let overlay = render::overlay(&photo, &heat, &style)?;
                render::save_png(&overlay, &dir.path(&format!("channel-{k}.png")))?;
                rows.push((k, render::fit(&overlay, render::SHEET_SIDE)));
            }
            obj["explained"] = json!({
                "channels": explained,
                "method": args.explain_method,
                "file": "heatmaps.safetensors",
            });
            render::write_json(&dir.path("channels.json"), &obj)?;
            save_channel_sheet(chosen, &rows, &Columns::default(), &dir.path("channels-sheet.png"))?;
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
                        .unwrap_or(extremal_invert::InvertConfig::channel_render().iterations),
                    seed: args.render_seed,
                    others: args.others,
                    parameterisation: args.render_parameterisation,
                    ..extremal_invert::InvertConfig::channel_render()
                },
                &dir.path("render.png"),
            )?;
            obj["render"] = json!({"file": "render.png", "relative_errors": rendered.errors, "others": format!("{:?}", args.others).to_lowercase(), "parameterisation": format!("{:?}", args.render_parameterisation).to_lowercase()});
            render::write_json(&dir.path("channels.json"), &obj)?;
            columns.inversions = rendered.singles;
            dir.commit()?;
        }
        if args.visualize && !rows.is_empty() {
            let channels: Vec<usize> = rows.iter().map(|(k, _)| *k).collect();
            let objectives: Vec<_> = channels
                .iter()
                .map(|&k| extremal_invert::Objective::Channel(k))
                .collect();
            let cfg = extremal_invert::VisualizeConfig {
                iterations: args.visualize_iterations,
                mean: model.preprocess().mean.map(f64::from),
                std: model.preprocess().std.map(f64::from),
                ..Default::default()
            };
            let vis = crate::visualize::run_visualization(&model, layer, &objectives, &cfg)?;
            for (i, &k) in channels.iter().enumerate() {
                let img = render::rgb_image(&vis.images.get(i)?)?;
                render::save_png(&img, &dir.path(&format!("visualization-{k}.png")))?;
                columns.visualizations.push((k, img));
            }
            obj["visualized"] = json!(channels
                .iter()
                .zip(&vis.objective)
                .map(|(k, v)| json!({"channel": k, "file": format!("visualization-{k}.png"), "value": v}))
                .collect::<Vec<_>>());
            render::write_json(&dir.path("channels.json"), &obj)?;
            dir.commit()?;
        }
        if let Some(ex) = &args.exemplars {
            for (k, _) in &rows {
                let path = ex.join(format!("exemplars/channel-{k}.png"));
                if let Ok(img) = image::open(&path) {
                    columns.exemplars.push((*k, img.to_rgb8()));
                }
            }
        }
        if !rows.is_empty()
            && (!columns.inversions.is_empty() || !columns.visualizations.is_empty() || !columns.exemplars.is_empty())
        {
            save_channel_sheet(chosen, &rows, &columns, &dir.path("channels-sheet.png"))?;
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
            for rr in &sweep.points {
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

/// The optional columns of `channels-sheet.png`, each `(channel, picture)`.
#[derive(Default)]
struct Columns {
    inversions: Vec<(usize, image::RgbImage)>,
    visualizations: Vec<(usize, image::RgbImage)>,
    exemplars: Vec<(usize, image::RgbImage)>,
}

/// `channels-sheet.png`: one row per explained kept channel — its contribution and heatmap,
/// then its inversion (`--render`), its visualization (`--visualize`) and its dataset
/// exemplars (`--exemplars`) where they were made.
fn save_channel_sheet(
    report: &extremal_mask::ChannelReport,
    rows: &[(usize, image::RgbImage)],
    columns: &Columns,
    path: &std::path::Path,
) -> Result<()> {
    let extra: Vec<(&[(usize, image::RgbImage)], &str)> = [
        (columns.inversions.as_slice(), "inverted"),
        (columns.visualizations.as_slice(), "visualized"),
        (columns.exemplars.as_slice(), "exemplars"),
    ]
    .into_iter()
    .filter(|(c, _)| !c.is_empty())
    .collect();
    let width = if extra.is_empty() {
        rows.len().clamp(1, 5)
    } else {
        1 + extra.len()
    };
    let mut tiles = Vec::new();
    for (k, overlay) in rows {
        tiles.push((overlay.clone(), format!("ch {k} {:+.3}", report.contributions[*k])));
        for (column, what) in &extra {
            match column.iter().find(|(j, _)| j == k) {
                Some((_, p)) => tiles.push((render::fit(p, render::SHEET_SIDE), format!("ch {k} {what}"))),
                None => tiles.push((image::RgbImage::new(overlay.width(), overlay.height()), String::new())),
            }
        }
    }
    render::save_png(&render::sheet(&tiles, width), path)
}

/// `channels DIR…`: every image of the inputs (of this shard), its channels.json in
/// `DIR/<image>/` and its record in `DIR/results.jsonl`; with the whole set done in one shard,
/// the class tables too.
fn run_folder(args: &ChannelsArgs, inputs: &InputsArgs, layer: &str) -> Result<()> {
    let Some(out) = &args.output.out else {
        bail!("a folder run needs --out DIR (its records go to DIR/results.jsonl)");
    };
    if args.sweep.is_some() || args.render {
        bail!("--sweep and --render take one image; a folder run keeps --keep channels of each");
    }
    let mut folder = Folder::<ChannelRecord>::open(inputs, Some(out))?;
    let model = args.model.load()?;
    let cfg = ChannelConfig {
        keep: args.keep.unwrap_or(ChannelConfig::default().keep),
        game: args.game,
        schedule: args.schedule,
        iterations: args.iterations,
        refine: !args.no_refine && args.schedule == Schedule::Default,
        starts: args.starts,
        ..ChannelConfig::default()
    };
    let total = folder.mine();
    let failed = folder.each(&args.model, &model, inputs, 1, "channels", |items, x| {
        let item = items[0];
        let site = ChannelSite::new(&model, x, layer, args.target)?;
        let report = channel_masks_at(&site, &cfg, &mut |_, _| {})?;
        let mut dir = OutDir::prepare(&image_folder(out, item))?;
        let mut obj = serde_json::to_value(&report)?;
        obj["model"] = json!(model.name());
        obj["layer"] = json!(layer);
        obj["image"] = json!(item.name);
        render::write_json(&dir.path("channels.json"), &obj)?;
        dir.commit()?;
        Ok(vec![ChannelRecord::new(&item.name, &site, &report)?])
    })?;
    let run = folder.run.as_ref().expect("opened with --out");
    let records = run.records()?;
    if inputs.shard.parse::<extremal_eval::Shard>()?.count > 1 || failed > 0 {
        crate::out(&format!(
            "{} of {total} images of shard {} done in {}; `extremal channels merge` tabulates the shards\n",
            records.len(),
            inputs.shard,
            run.results().display()
        ));
        return folder::finish(failed, total);
    }
    write_tables(
        &records,
        &folder.set,
        &args.model,
        &model,
        args.keep_aspect,
        &out.join("classes.json"),
        args.output.json,
    )
}

/// The class tables of `records` (images of `images`, by name), written to `out` and printed.
fn write_tables(
    records: &[ChannelRecord],
    images: &ImageSet,
    args: &ModelArgs,
    model: &Model,
    keep_aspect: bool,
    out: &Path,
    json: bool,
) -> Result<()> {
    let paths: std::collections::HashMap<&str, &Path> = images
        .items()
        .iter()
        .map(|i| (i.name.as_str(), i.path.as_path()))
        .collect();
    let bar = progress_bar(records.len() as u64, "class sets", "");
    let tables = class_tables(records, &mut |r, sets| {
        let path = paths.get(r.image.as_str()).copied().ok_or_else(|| {
            extremal_mask::Error::Invalid(format!(
                "the record of `{}` names an image that the inputs do not hold",
                r.image
            ))
        })?;
        let x = args
            .image(model, path, keep_aspect)
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
