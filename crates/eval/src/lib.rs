//! Dataset runs of attribution methods, as TorchRay's benchmark scores them.
//!
//! - [`dataset`]: PASCAL VOC (XML boxes, `difficult` flags) and COCO (JSON polygons and
//!   run-length masks) ground truth; the "difficult" subset of the excitation-backprop
//!   benchmark ([`DifficultFlags`]).
//! - [`ClassMap`]: which ImageNet classes stand for each VOC / COCO class (a class's score is
//!   the largest of theirs), or the identity for fine-tuned weights; [`Mapped`] wraps a
//!   network so that its outputs are the dataset's classes.
//! - [`run`]: one JSON line per (image, class) ([`Record`]), an append-only [`Journal`] that
//!   resumes where a run stopped, [`Shard`]s `K/N` that split a dataset between machines, and
//!   [`merge`] into the final [`Table`] (TorchRay's class-averaged pointing accuracy, or the
//!   mean deletion / insertion AUC).
//! - [`exemplars`]: dataset exemplars — each image's per-channel peak and position
//!   ([`exemplars::PeakRecord`], a folder run's record), the exact top-N per channel across
//!   runs and shards ([`exemplars::top_exemplars`]) and their receptive-field regions
//!   ([`exemplars::Regions`]).
//! - [`score`]: one pair scored ([`PairScorer`]) with each method's benchmark settings, and
//!   which pairs are skipped ([`skip_reason`]).
//!
//! ```
//! use extremal_eval::{merge, ClassMap, Record, Shard};
//!
//! let shard: Shard = "1/4".parse()?;
//! assert_eq!((shard.index, shard.count), (1, 4));
//! assert_eq!(ClassMap::voc_imagenet().of(7), &[281, 282, 283, 284, 285]); // cat
//! let record = |image: &str, class: usize, hit: bool| Record {
//!     image: image.into(),
//!     class,
//!     class_name: "cat".into(),
//!     method: "gradient".into(),
//!     metric: "pointing".into(),
//!     dataset_classes: 20,
//!     skipped: None,
//!     point: Some((10, 10)),
//!     hit: Some(hit),
//!     auc: None,
//! };
//! let table = merge(&[record("a", 7, true), record("b", 7, false)])?;
//! assert_eq!(table.classes[0].value, 0.5);
//! assert_eq!(table.value, 0.5 / 20.0); // TorchRay averages over all 20 classes
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod classes;
pub mod dataset;
pub mod exemplars;
pub mod folder;
pub mod run;
pub mod score;

pub use classes::{ClassMap, Mapped};
pub use dataset::{Dataset, DifficultFlags, Format, Item};
pub use folder::{FolderRun, ImageItem, ImageRecord, ImageSet};
pub use run::{merge, pairs, read_records, ClassRow, Journal, Record, Shard, Table};
pub use score::{skip_reason, Metric, PairScorer, Scoring};

/// Errors of dataset runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A dataset file that cannot be read or understood.
    #[error("{path}: {message}")]
    Dataset {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A file that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// An attribution error.
    #[error(transparent)]
    Attr(#[from] extremal_attr::Error),
    /// A site error.
    #[error(transparent)]
    Hook(#[from] extremal_hook::Error),
    /// A kernel error.
    #[error(transparent)]
    Ops(#[from] extremal_ops::Error),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A request that cannot be met, with what to do instead.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
