//! Named sites in a network: read, replace or mask the activation there, run only the prefix
//! up to a site or only the suffix from it, and take gradients at any site.
//!
//! A **site** is a place where a tensor can be read, replaced or masked: the input, or the
//! output of a named layer (`layer4`, `layer3.5.conv2`, `features.29`). The **prefix** is the
//! part of the network before a site, the **suffix** the part after it.
//!
//! The **receptive field** of a site ([`Network::receptive_field`]) says which input pixels a
//! position there can depend on: a [`Graph`] computes it from its layers' [`Footprint`]s, and
//! [`probe_region`] measures it by gradients for any network.
//!
//! Networks implement [`Network`]. The easy way is to describe the network as a [`Graph`] of
//! [`Node`]s (layers, sequences, residual blocks, concatenations), which gives exact prefix
//! caching for free; a hand-written model only needs [`Network::sites`] and
//! [`Network::forward_hooked`].
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use extremal_hook::{Graph, Hooks, Network, Node};
//!
//! // y = relu(2x) + x, with sites "double", "relu" and "block".
//! let graph = Graph::new(Node::seq("", vec![Node::residual(
//!     "block",
//!     Node::seq("", vec![
//!         Node::layer("double", |x: &Tensor| x * 2.0),
//!         Node::layer("relu", |x: &Tensor| x.relu()),
//!     ]),
//!     None,
//! )]));
//! let x = Tensor::new(&[[-1f32, 3.0]], &Device::Cpu)?;
//!
//! // Read a site and replace another one.
//! let mut hooks = Hooks::new().read("double").replace("relu", Tensor::new(&[[10f32, 10.0]], &Device::Cpu)?);
//! let y = graph.forward_hooked(&x, &mut hooks)?;
//! assert_eq!(hooks.activation("double").unwrap().to_vec2::<f32>()?, vec![vec![-2.0, 6.0]]);
//! assert_eq!(y.to_vec2::<f32>()?, vec![vec![9.0, 13.0]]);
//!
//! // Run the prefix once, then only the suffix with a masked activation.
//! let prefix = graph.prefix(&x, "relu")?;
//! let masked = prefix.activation().broadcast_mul(&Tensor::new(&[[0f32, 1.0]], &Device::Cpu)?)?;
//! let y = graph.suffix(&prefix, &masked, &mut Hooks::new())?;
//! assert_eq!(y.to_vec2::<f32>()?, vec![vec![-1.0, 9.0]]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod graph;
mod hooks;
mod network;
mod receptive;

pub use graph::{fit_batch, Graph, Node, Silent};
pub use hooks::{Action, Hook, Hooks};
pub use network::{nearest_names, Network, Prefix};
pub use receptive::{probe_region, AxisField, Footprint, ReceptiveField, Window, WindowPadding};

/// Errors of site handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The network has no site of that name.
    #[error("unknown layer `{name}`{}", suggestion(.nearest))]
    UnknownSite {
        /// The name asked for.
        name: String,
        /// The closest valid names.
        nearest: Vec<String>,
    },
    /// A replacement or a mask does not fit the activation at a site.
    #[error("site `{site}`: {message}")]
    Site {
        /// The site.
        site: String,
        /// What is wrong.
        message: String,
    },
    /// An error of a [`Network`] implementation (an ONNX graph's operator, …), kept whole.
    #[error(transparent)]
    Network(Box<dyn std::error::Error + Send + Sync>),
}

fn suggestion(nearest: &[String]) -> String {
    if nearest.is_empty() {
        String::new()
    } else {
        format!(
            "; nearest valid names: {} (`extremal layers` lists them all)",
            nearest.join(", ")
        )
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
