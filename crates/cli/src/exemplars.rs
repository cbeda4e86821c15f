//! `extremal exemplars`: the images of a folder or dataset that excite each channel most.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use extremal_eval::exemplars::{crop, peak_records, top_exemplars, ChannelExemplars, PeakRecord, Regions};
use extremal_eval::{read_records, FolderRun, ImageItem, ImageSet};
use extremal_hook::Network;
use extremal_models::Model;
use serde_json::json;

use crate::args::{DatasetArgs, InputsArgs, ModelArgs};
use crate::folder::Folder;
use crate::render;

/// Dataset exemplars: one pass over the images (the network up to the layer, batched) records
/// each channel's peak per image in DIR/results.jsonl (resumable, shardable); then
/// DIR/exemplars.json lists each channel's top images with the receptive field of the peak,
/// and DIR/exemplars/channel-<k>.png shows those crops. `--from` adds other runs' records
/// (the shards of the same images): the index is the same as one run's.
#[derive(clap::Args)]
pub(crate) struct ExemplarsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The site: a native name or an alias (`layer1`…`layer4`).
    #[arg(long)]
    layer: String,
    /// Image files or folders of images (searched recursively).
    #[arg(long, num_args = 1.., required_unless_present = "dataset", conflicts_with = "dataset")]
    images: Vec<PathBuf>,
    /// Or a VOC or COCO dataset (`--dataset DIR`): its images, in its order.
    #[command(flatten)]
    data: DatasetArgs,
    /// The channels to show, comma separated (default: every channel of the site).
    #[arg(long, value_delimiter = ',', conflicts_with = "mask")]
    channels: Option<Vec<usize>>,
    /// Show the kept channels of a channels.json written by `extremal channels --out`.
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Exemplars per channel.
    #[arg(long, default_value_t = 9)]
    top: usize,
    /// Other runs' output folders whose records count too (the other shards).
    #[arg(long, num_args = 1..)]
    from: Vec<PathBuf>,
    /// Resize the shorter side to the model's input size instead of the whole image to a square.
    #[arg(long)]
    keep_aspect: bool,
    /// Do share K of N of the images (K from 0; images i with i mod N = K).
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Images per forward pass (images of one size are batched together).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// The run's folder: results.jsonl, exemplars.json, exemplars/ (a rerun resumes).
    #[arg(long)]
    out: PathBuf,
    /// Print exemplars.json's object as one line.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &ExemplarsArgs) -> Result<()> {
    if args.top == 0 {
        bail!("--top 0 keeps nothing; give 1 or more");
    }
    for dir in &args.from {
        let results = dir.join(FolderRun::<PeakRecord>::RESULTS);
        if !results.is_file() {
            bail!(
                "--from {}: no {} there; give the --out folder of another exemplars run",
                dir.display(),
                FolderRun::<PeakRecord>::RESULTS
            );
        }
    }
    // Inputs and the journal are checked before the model is loaded.
    let inputs = InputsArgs {
        inputs: args.images.clone(),
        keep_aspect: args.keep_aspect,
        shard: args.shard.clone(),
        batch: args.batch,
    };
    let mut folder = match &args.data.dataset {
        Some(dir) => {
            let dataset = args.data.load(dir)?;
            Folder::<PeakRecord>::from_set(ImageSet::from_dataset(&dataset), &args.shard, &args.out)?
        }
        None => Folder::<PeakRecord>::open(&inputs, Some(&args.out))?,
    };
    if args.batch == 0 {
        bail!("--batch 0 runs nothing; give 1 or more");
    }
    let mut others: Vec<PeakRecord> = Vec::new();
    for dir in &args.from {
        others.extend(read_records::<PeakRecord>(&dir.join(FolderRun::<PeakRecord>::RESULTS))?);
    }
    // The images the other runs did are not run again.
    if let Some(run) = folder.run.as_mut() {
        run.also_done(others.iter().map(|r| r.image.as_str()));
    }
    let model = args.model.load()?;
    let site = model.resolve(&args.layer)?;
    let total = folder.mine();
    let start = Instant::now();
    let todo = folder.todo().len();
    let failed = folder.each(&args.model, &model, &inputs, args.batch, "exemplars", |items, x| {
        let names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        Ok(peak_records(&model, &site, x, &names)?)
    })?;
    let pass_seconds = start.elapsed().as_secs_f64();

    let mut records: Vec<PeakRecord> = folder.run.as_ref().expect("a journal").records()?;
    records.extend(others);
    let channels_at_site = records.first().map_or(0, |r| r.peaks.len());
    let channels: Vec<usize> = match (&args.channels, &args.mask) {
        (Some(set), _) => set.clone(),
        (None, Some(path)) => crate::invert::read_report(path, &site, channels_at_site)?
            .kept()
            .to_vec(),
        (None, None) => (0..channels_at_site).collect(),
    };
    let mut regions = Regions::new(&model, &site)?;
    let table = top_exemplars(&records, &channels, args.top, &mut regions)?;
    let field = records.first().map(|r| regions.field(r.input)).transpose()?.flatten();
    write_sheets(args, &model, &folder.set, &table)?;
    let index = json!({
        "model": model.name(),
        "layer": args.layer,
        "site": site,
        "images": records.iter().map(|r| r.image.as_str()).collect::<std::collections::BTreeSet<_>>().len(),
        "top": args.top,
        "receptive_field": field,
        "channels": table,
    });
    render::write_atomic(
        &args.out.join("exemplars.json"),
        serde_json::to_string_pretty(&index)?.as_bytes(),
    )?;
    if args.json {
        crate::out(&format!("{index}\n"));
    } else {
        let rate = if pass_seconds > 0.0 {
            todo as f64 / pass_seconds
        } else {
            0.0
        };
        crate::out(&format!(
            "{} at {site}: {} images ({todo} new, {rate:.1} images/s), {} channels, top {} each -> {}\n",
            model.name(),
            index["images"],
            table.len(),
            args.top,
            args.out.join("exemplars.json").display()
        ));
    }
    crate::folder::finish(failed, total)
}

/// Writes `exemplars/channel-<k>.png`: the crops of each channel's exemplars, strongest first.
fn write_sheets(args: &ExemplarsArgs, model: &Model, set: &ImageSet, table: &[ChannelExemplars]) -> Result<()> {
    let paths: HashMap<&str, &ImageItem> = set.items().iter().map(|i| (i.name.as_str(), i)).collect();
    let dir = args.out.join("exemplars");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut images: HashMap<String, Tensor> = HashMap::new();
    for ch in table {
        let mut tiles = Vec::with_capacity(ch.exemplars.len());
        for e in &ch.exemplars {
            if !images.contains_key(&e.image) {
                let item = paths.get(e.image.as_str()).with_context(|| {
                    format!(
                        "image {} of the records is not among the inputs; give the same images as the runs in --from",
                        e.image
                    )
                })?;
                let x = args.model.image(model, &item.path, args.keep_aspect)?;
                images.insert(e.image.clone(), model.preprocess().denormalise(&x)?.squeeze(0)?);
            }
            let rgb = crop(&images[&e.image], e.region)?;
            let tile = render::fit(&render::rgb_image(&rgb)?, 128);
            tiles.push((tile, format!("{:.2}", e.value)));
        }
        let path = dir.join(format!("channel-{}.png", ch.channel));
        let mut bytes = Vec::new();
        let sheet = render::sheet(&tiles, tiles.len().clamp(1, 5));
        sheet
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .with_context(|| format!("cannot encode {}", path.display()))?;
        render::write_atomic(&path, &bytes)?;
    }
    Ok(())
}
