//! The one folder mode of `classify`, `attribute` and `channels`: the images of several inputs
//! or folders, the model loaded once, batches where the method allows, a progress bar that
//! counts images, one record per image in `results.jsonl`, and a rerun that skips images done.

use anyhow::{bail, Result};
use candle_core::Tensor;
use extremal_eval::{FolderRun, ImageItem, ImageRecord, ImageSet, Shard};
use extremal_models::Model;

use crate::args::{progress_bar, InputsArgs, ModelArgs};

/// The images of a folder run and the run's journal (none without `--out`: nothing is
/// resumed, the records are only printed).
pub(crate) struct Folder<R: ImageRecord> {
    pub(crate) set: ImageSet,
    pub(crate) run: Option<FolderRun<R>>,
    shard: Shard,
}

impl<R: ImageRecord> Folder<R> {
    /// Checks the inputs and opens the journal in `out`, before the model is loaded.
    pub(crate) fn open(inputs: &InputsArgs, out: Option<&std::path::Path>) -> Result<Self> {
        let shard: Shard = inputs.shard.parse()?;
        if inputs.batch == 0 {
            bail!("--batch 0 runs nothing; give 1 or more");
        }
        let set = ImageSet::from_inputs(&inputs.inputs)?;
        let run = out.map(FolderRun::open).transpose()?;
        Ok(Self { set, run, shard })
    }

    /// A folder run over `set` (a dataset's images), its journal in `out`.
    pub(crate) fn from_set(set: ImageSet, shard: &str, out: &std::path::Path) -> Result<Self> {
        let shard: Shard = shard.parse()?;
        Ok(Self {
            set,
            run: Some(FolderRun::open(out)?),
            shard,
        })
    }

    /// The images of this shard without a record.
    pub(crate) fn todo(&self) -> Vec<&ImageItem> {
        match &self.run {
            Some(run) => run.todo(&self.set, self.shard),
            None => self.set.shard(self.shard).collect(),
        }
    }

    /// How many images this shard has in all.
    pub(crate) fn mine(&self) -> usize {
        self.set.shard(self.shard).count()
    }

    /// Runs `work` over the images not yet done, up to `batch` consecutive images of one size
    /// at a time, and records what it returns (one record per image, written after its
    /// files). An image that cannot be read or explained is reported and left without a
    /// record (a rerun tries it again); returns how many failed.
    pub(crate) fn each(
        &mut self,
        model_args: &ModelArgs,
        model: &Model,
        inputs: &InputsArgs,
        batch: usize,
        label: &str,
        mut work: impl FnMut(&[&ImageItem], &Tensor) -> Result<Vec<R>>,
    ) -> Result<usize> {
        let todo: Vec<ImageItem> = self.todo().into_iter().cloned().collect();
        let bar = progress_bar(todo.len() as u64, label, " images (eta {eta}) {msg}");
        let mut failed = 0;
        let mut pending: Vec<(&ImageItem, Tensor)> = Vec::new();
        let mut flush = |pending: &mut Vec<(&ImageItem, Tensor)>, failed: &mut usize| -> Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let items: Vec<&ImageItem> = pending.iter().map(|(i, _)| *i).collect();
            bar.set_message(items[0].name.clone());
            let x = Tensor::cat(&pending.iter().map(|(_, x)| x.clone()).collect::<Vec<_>>(), 0)?;
            match work(&items, &x) {
                Ok(records) => {
                    for r in &records {
                        if let Some(run) = self.run.as_mut() {
                            run.record(r)?;
                        }
                    }
                }
                Err(e) => {
                    *failed += items.len();
                    for i in &items {
                        bar.suspend(|| eprintln!("{}: {}", i.name, crate::one_line(&e)));
                    }
                }
            }
            bar.inc(items.len() as u64);
            pending.clear();
            Ok(())
        };
        for item in &todo {
            let x = match model_args.image(model, &item.path, inputs.keep_aspect) {
                Ok(x) if x.dim(0)? == 1 => x,
                Ok(x) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("{}: the tensor holds {} images; give one", item.name, x.dims()[0]));
                    bar.inc(1);
                    continue;
                }
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("{}: {}", item.name, crate::one_line(&e)));
                    bar.inc(1);
                    continue;
                }
            };
            let same_size = pending.first().is_none_or(|(_, p)| p.dims() == x.dims());
            if !same_size || pending.len() >= batch {
                flush(&mut pending, &mut failed)?;
            }
            pending.push((item, x));
        }
        flush(&mut pending, &mut failed)?;
        bar.finish_and_clear();
        Ok(failed)
    }
}

/// The end of a folder run: an error when images failed (they were reported one by one).
pub(crate) fn finish(failed: usize, total: usize) -> Result<()> {
    if failed > 0 {
        bail!("{failed} of {total} images failed (reported above); a rerun with the same --out tries them again");
    }
    Ok(())
}
