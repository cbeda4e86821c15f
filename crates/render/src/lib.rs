//! Pictures for extremal: saliency maps over the photograph at its own resolution, with the
//! standard colour maps ([`Colormap`], from the `colorous` crate), a diverging map for signed
//! attributions, labelled sheets and line plots with axes.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use extremal_render::{overlay, HeatStyle};
//!
//! // A 3×40×60 photograph and a 1×4×4 saliency map at the model's resolution.
//! let image = Tensor::full(0.5f32, (3, 40, 60), &Device::Cpu)?;
//! let heat = Tensor::arange(0f32, 16.0, &Device::Cpu)?.reshape((4, 4))?;
//! let picture = overlay(&image, &heat, &HeatStyle::default())?;
//! assert_eq!(picture.dimensions(), (60, 40)); // the photograph's size, not the map's
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod colour;
mod heat;
mod plot;
mod sheet;

pub use colour::{diverging, Colormap};
pub use heat::{heat_image, overlay, percentile, HeatScale, HeatStyle, ValueRange};
pub use plot::{line_plot, LinePlot};
pub use sheet::{fit, rgb_image, sheet, text};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A resize failed.
    #[error(transparent)]
    Ops(#[from] extremal_ops::Error),
    /// An argument is out of its range (an empty map, an alpha outside [0, 1], …).
    #[error("{0}")]
    Invalid(String),
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;
