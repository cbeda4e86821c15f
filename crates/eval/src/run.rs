//! Records of a dataset run, one JSON line per (image, class): shards, resuming, merging.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Read, Seek, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::{Error, Result};

/// Which share of a dataset one machine runs: images `i` with `i mod count == index`.
/// `index` counts from 0, as Kubernetes' `JOB_COMPLETION_INDEX` and Slurm's
/// `SLURM_ARRAY_TASK_ID` (with `--array=0-N-1`) do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0 ≤ index < count`.
    pub index: usize,
    /// How many shards.
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Invalid(format!("--shard `{s}`: write K/N with 0 ≤ K < N, e.g. 0/4"));
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

/// The (image index, class) pairs of `shard`, in dataset order.
pub fn pairs(dataset: &Dataset, shard: Shard) -> Vec<(usize, usize)> {
    dataset
        .items
        .iter()
        .enumerate()
        .filter(|(i, _)| i % shard.count == shard.index)
        .flat_map(|(i, item)| item.classes().into_iter().map(move |c| (i, c)))
        .collect()
}

/// The result of one (image, class) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The image's name.
    pub image: String,
    /// The dataset class index.
    pub class: usize,
    /// Its name.
    pub class_name: String,
    /// The attribution method.
    pub method: String,
    /// `pointing`, `deletion` or `insertion`.
    pub metric: String,
    /// How many classes the dataset has (TorchRay's pointing accuracy averages over all).
    pub dataset_classes: usize,
    /// Why the pair was not scored (`difficult`: all its boxes are PASCAL-difficult;
    /// `not in subset`: the difficult-subset flags leave it out; `unmapped`: the model has no
    /// class for it); absent when scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Pointing: the saliency maximum `(u, v)` in image pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<(usize, usize)>,
    /// Pointing: whether it hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hit: Option<bool>,
    /// Deletion / insertion: the area under the curve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auc: Option<f64>,
}

impl Record {
    /// The key that identifies a pair across runs.
    pub fn key(&self) -> (String, usize) {
        (self.image.clone(), self.class)
    }
}

/// The first line of every journal: a JSON object that says extremal wrote the file, so that
/// extremal never truncates or appends to a file it did not write.
const HEADER: &str = r#"{"extremal_journal":1}"#;

/// The longest line a journal may hold (a record is a few hundred bytes).
const MAX_LINE: u64 = 1 << 20;

/// An append-only JSON-lines file of records that survives interruption and refuses company:
/// - its first line is a header (`{"extremal_journal":1}`), so every line parses as JSON, and
///   a file that does not start with it (or with a record, as journals of earlier versions
///   do) is refused, never truncated or appended to;
/// - it is held with an exclusive lock while open: a second writer (two shards given the same
///   `--out`) is refused at start;
/// - on opening, the records already there are read (their pairs are done), lines of at most
///   1 MiB, and a last line cut short by an interruption is dropped;
/// - every record is written as one line and flushed;
/// - it must be a regular file (not `/dev/stdout`, `/dev/full`).
pub struct Journal<R = Record> {
    file: std::fs::File,
    path: PathBuf,
    /// The records read when the journal was opened.
    pub done: Vec<R>,
}

impl<R: Serialize + serde::de::DeserializeOwned> Journal<R> {
    /// Opens (or creates) the journal at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let io = |e: std::io::Error| Error::Io {
            path: shown.clone(),
            source: e,
        };
        let refuse = |message: String| Error::Dataset {
            path: shown.clone(),
            message,
        };
        match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => {
                return Err(refuse(
                    "is not a regular file; --out takes a file path (FILE.jsonl)".into(),
                ))
            }
            Ok(_) => {}
            Err(_) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(refuse(
                    "another extremal run is writing this journal; give each shard its own --out".into(),
                ))
            }
            Err(fs4::TryLockError::Error(e)) => return Err(io(e)),
        }
        let mut done = Vec::new();
        let mut good = 0u64;
        {
            let mut reader = std::io::BufReader::new(&file);
            let mut line = String::new();
            let mut n = 0;
            loop {
                line.clear();
                let read = (&mut reader).take(MAX_LINE + 1).read_line(&mut line).map_err(io)?;
                if read == 0 {
                    break;
                }
                n += 1;
                if read as u64 > MAX_LINE {
                    return Err(refuse(format!(
                        "line {n} is longer than 1 MiB: not a journal extremal wrote"
                    )));
                }
                let complete = line.ends_with('\n');
                let text = line.trim_end();
                if n == 1 {
                    let ours = if complete {
                        text == HEADER || serde_json::from_str::<R>(text).is_ok()
                    } else {
                        // A header cut short by an interruption.
                        !text.is_empty() && HEADER.starts_with(text)
                    };
                    if !ours {
                        return Err(refuse(
                            "is not a journal extremal wrote (its first line is neither extremal's header nor a \
                             record): refusing to change it; give another --out"
                                .into(),
                        ));
                    }
                    if text == HEADER {
                        good += read as u64;
                        continue;
                    }
                }
                if !complete {
                    break; // cut short: dropped below
                }
                let record: R = serde_json::from_str(text)
                    .map_err(|e| refuse(format!("line {n} is not a record ({e}); is this the right file?")))?;
                done.push(record);
                good += read as u64;
            }
        }
        file.set_len(good).map_err(io)?;
        file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        if good == 0 {
            file.write_all(format!("{HEADER}\n").as_bytes())
                .and_then(|_| file.flush())
                .map_err(io)?;
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            done,
        })
    }

    /// Appends one record as one line, flushed to the file.
    pub fn append(&mut self, record: &R) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| Error::Invalid(e.to_string()))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::Io {
                path: self.path.display().to_string(),
                source: e,
            })
    }
}

impl Journal<Record> {
    /// The pairs already recorded.
    pub fn done_keys(&self) -> HashSet<(String, usize)> {
        self.done.iter().map(Record::key).collect()
    }
}

/// Reads the records of a journal (a shard's output), without changing it: the header and a
/// last line cut short are skipped.
pub fn read_records<R: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<R>> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| Error::Io {
        path: shown.clone(),
        source: e,
    })?;
    if !meta.is_file() {
        return Err(Error::Dataset {
            path: shown,
            message: "is not a regular file".into(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: shown.clone(),
        source: e,
    })?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let last = lines.len();
    lines
        .into_iter()
        .enumerate()
        .filter(|(i, l)| {
            let header = *i == 0 && l.trim() == HEADER;
            let cut_short = !complete && i + 1 == last;
            !(l.trim().is_empty() || header || cut_short)
        })
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::Dataset {
                path: shown.clone(),
                message: format!("line {} is not a record ({e})", i + 1),
            })
        })
        .collect()
}

/// One class's line of a [`Table`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassRow {
    /// Class index.
    pub class: usize,
    /// Class name.
    pub name: String,
    /// Scored pairs.
    pub scored: usize,
    /// Pointing: hits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hits: Option<usize>,
    /// Pointing: misses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misses: Option<usize>,
    /// Pointing: `hits / max(hits + misses, 1)`; deletion / insertion: the mean AUC.
    pub value: f64,
}

/// The result of a run: per class, and the mean over classes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// The method.
    pub method: String,
    /// The metric.
    pub metric: String,
    /// Records merged.
    pub pairs: usize,
    /// Records not scored, by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Per class, in class order, for every class that has a record.
    pub classes: Vec<ClassRow>,
    /// Pointing: TorchRay's accuracy, the mean of the class accuracies over all the dataset's
    /// classes (a class with no scored pair counts 0); deletion / insertion: the mean AUC over
    /// the classes with scored pairs.
    pub value: f64,
    /// The mean over the classes that have scored pairs only.
    pub value_scored_classes: f64,
}

/// Combines records (the shards of one run, in any order) into the final table. The same pair
/// twice must carry the same result (a resumed run never writes one twice).
pub fn merge(records: &[Record]) -> Result<Table> {
    let first = records
        .first()
        .ok_or_else(|| Error::Invalid("no records to merge".into()))?;
    let mut seen: BTreeMap<(String, usize), &Record> = BTreeMap::new();
    for r in records {
        if r.method != first.method || r.metric != first.metric || r.dataset_classes != first.dataset_classes {
            return Err(Error::Invalid(format!(
                "records of different runs: {} / {} and {} / {}",
                first.method, first.metric, r.method, r.metric
            )));
        }
        if let Some(prev) = seen.insert(r.key(), r) {
            if prev != r {
                return Err(Error::Invalid(format!(
                    "image {} class {} has two different records",
                    r.image, r.class
                )));
            }
        }
    }
    let mut skipped = BTreeMap::new();
    let mut per: BTreeMap<usize, (String, Vec<&Record>)> = BTreeMap::new();
    for r in seen.values() {
        let entry = per.entry(r.class).or_insert_with(|| (r.class_name.clone(), Vec::new()));
        match &r.skipped {
            Some(why) => *skipped.entry(why.clone()).or_insert(0) += 1,
            None => entry.1.push(r),
        }
    }
    let pointing = first.metric == "pointing";
    let mut classes = Vec::new();
    for (class, (name, rs)) in per {
        let row = if pointing {
            let hits = rs.iter().filter(|r| r.hit == Some(true)).count();
            let misses = rs.iter().filter(|r| r.hit == Some(false)).count();
            ClassRow {
                class,
                name,
                scored: rs.len(),
                hits: Some(hits),
                misses: Some(misses),
                value: hits as f64 / (hits + misses).max(1) as f64,
            }
        } else {
            let aucs: Vec<f64> = rs.iter().filter_map(|r| r.auc).collect();
            ClassRow {
                class,
                name,
                scored: aucs.len(),
                hits: None,
                misses: None,
                value: if aucs.is_empty() {
                    0.0
                } else {
                    aucs.iter().sum::<f64>() / aucs.len() as f64
                },
            }
        };
        classes.push(row);
    }
    let scored: Vec<&ClassRow> = classes.iter().filter(|c| c.scored > 0).collect();
    let mean_scored = if scored.is_empty() {
        0.0
    } else {
        scored.iter().map(|c| c.value).sum::<f64>() / scored.len() as f64
    };
    let value = if pointing {
        classes.iter().map(|c| c.value).sum::<f64>() / first.dataset_classes.max(1) as f64
    } else {
        mean_scored
    };
    Ok(Table {
        method: first.method.clone(),
        metric: first.metric.clone(),
        pairs: seen.len(),
        skipped,
        classes,
        value,
        value_scored_classes: mean_scored,
    })
}
