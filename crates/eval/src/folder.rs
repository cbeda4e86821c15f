//! Folder runs: one command over many images with the model loaded once, one record per image
//! in `DIR/results.jsonl`, and a rerun that skips the images already done.
//!
//! [`ImageSet`] names the images (files, or folders searched recursively), [`FolderRun`]
//! keeps the journal and says which images remain and where each one's files go.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use crate::{read_records, Error, Journal, Result, Shard};

/// One image of an [`ImageSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageItem {
    /// Where the image is.
    pub path: PathBuf,
    /// Its name in the run's records and output folder: its path relative to the folder it
    /// was found in (`/`-separated), or its file name when it was given by itself.
    pub name: String,
}

/// The images of a folder run, in order: each input file as given, each input folder's images
/// found recursively and sorted.
#[derive(Debug, Clone, Default)]
pub struct ImageSet {
    items: Vec<ImageItem>,
}

impl ImageSet {
    /// The images of `inputs` (image files, `.safetensors` inputs or folders). A missing input,
    /// a folder without images or two images with the same name are refused.
    pub fn from_inputs(inputs: &[PathBuf]) -> Result<Self> {
        let refuse = |path: &Path, message: String| Error::Dataset {
            path: path.display().to_string(),
            message,
        };
        let mut items = Vec::new();
        for input in inputs {
            if input.is_dir() {
                let found = extremal_models::image_files(input).map_err(|e| refuse(input, e.to_string()))?;
                if found.is_empty() {
                    return Err(refuse(
                        input,
                        format!(
                            "no images ({}) in this folder",
                            extremal_models::IMAGE_EXTENSIONS.join(", ")
                        ),
                    ));
                }
                items.extend(found.into_iter().map(|path| {
                    let name = path
                        .strip_prefix(input)
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .replace('\\', "/");
                    ImageItem { path, name }
                }));
            } else if input.is_file() {
                let name = input
                    .file_name()
                    .map_or_else(|| input.to_string_lossy(), |n| n.to_string_lossy())
                    .into_owned();
                items.push(ImageItem {
                    path: input.clone(),
                    name,
                });
            } else {
                return Err(refuse(input, "no such file or folder".into()));
            }
        }
        let mut seen = HashSet::new();
        if let Some(twin) = items.iter().find(|i| !seen.insert(i.name.as_str())) {
            return Err(refuse(
                &twin.path,
                format!(
                    "two inputs are both named `{}`; give their common folder instead, so that they are told apart by path",
                    twin.name
                ),
            ));
        }
        Ok(Self { items })
    }

    /// The images of a dataset, in its order, named by the dataset's image names.
    pub fn from_dataset(dataset: &crate::Dataset) -> Self {
        Self {
            items: dataset
                .items
                .iter()
                .map(|i| ImageItem {
                    path: i.path.clone(),
                    name: i.name.clone(),
                })
                .collect(),
        }
    }

    /// Every image, in order.
    pub fn items(&self) -> &[ImageItem] {
        &self.items
    }

    /// The images of `shard` (every `count`-th, from `index`).
    pub fn shard(&self, shard: Shard) -> impl Iterator<Item = &ImageItem> {
        self.items
            .iter()
            .enumerate()
            .filter(move |(i, _)| i % shard.count == shard.index)
            .map(|(_, item)| item)
    }
}

/// A record of a folder run: it names its image.
pub trait ImageRecord: Serialize + DeserializeOwned {
    /// The image's name ([`ImageItem::name`]).
    fn image(&self) -> &str;
}

impl ImageRecord for serde_json::Value {
    /// The record's `"image"` field.
    fn image(&self) -> &str {
        self["image"].as_str().unwrap_or_default()
    }
}

impl ImageRecord for extremal_mask::ChannelRecord {
    fn image(&self) -> &str {
        &self.image
    }
}

/// The folder for `item`'s files in a run's output folder `dir`: `dir/<name>`, the name's
/// folders kept (`dir/cats/chelsea.png/`).
pub fn image_folder(dir: &Path, item: &ImageItem) -> PathBuf {
    dir.join(&item.name)
}

/// A folder run's output folder: `results.jsonl` (one record per image, appended as each one
/// is done) and each image's own subfolder, named after the image.
pub struct FolderRun<R: ImageRecord> {
    dir: PathBuf,
    journal: Journal<R>,
    done: HashSet<String>,
}

impl<R: ImageRecord> FolderRun<R> {
    /// The journal's file name in the output folder.
    pub const RESULTS: &'static str = "results.jsonl";

    /// Opens (or starts) the run whose results go into `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Dataset {
                path: dir.display().to_string(),
                message: "is a file; a folder run writes into a folder".into(),
            });
        }
        let journal = Journal::<R>::open(&dir.join(Self::RESULTS))?;
        let done = journal.done.iter().map(|r| r.image().to_string()).collect();
        Ok(Self {
            dir: dir.to_path_buf(),
            journal,
            done,
        })
    }

    /// The journal's path.
    pub fn results(&self) -> PathBuf {
        self.dir.join(Self::RESULTS)
    }

    /// Whether `item` has a record already.
    pub fn is_done(&self, item: &ImageItem) -> bool {
        self.done.contains(&item.name)
    }

    /// Counts `images` as done too (their records are in other runs' journals: the other
    /// shards of a merge).
    pub fn also_done<'a>(&mut self, images: impl IntoIterator<Item = &'a str>) {
        self.done.extend(images.into_iter().map(str::to_string));
    }

    /// The images of `shard` of `set` that have no record yet.
    pub fn todo<'a>(&self, set: &'a ImageSet, shard: Shard) -> Vec<&'a ImageItem> {
        set.shard(shard).filter(|i| !self.is_done(i)).collect()
    }

    /// The folder for `item`'s files ([`image_folder`]).
    pub fn folder(&self, item: &ImageItem) -> PathBuf {
        image_folder(&self.dir, item)
    }

    /// Appends `record` (write its image's files first: a record says the image is done).
    pub fn record(&mut self, record: &R) -> Result<()> {
        self.journal.append(record)?;
        self.done.insert(record.image().to_string());
        Ok(())
    }

    /// Every record in the journal, earlier runs' included.
    pub fn records(&self) -> Result<Vec<R>> {
        read_records(&self.results())
    }
}
