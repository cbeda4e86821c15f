use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::{Error, Result};

/// Something that sees, and may change, the activation at every site a forward pass crosses.
pub trait Hook {
    /// Called with the activation at `site`; returns the tensor the network continues with.
    fn visit(&mut self, site: &str, activation: Tensor) -> Result<Tensor>;

    /// Whether this hook needs the activation at `site`. A network may skip computing the
    /// activations at sites no hook wants, for example by running a convolution, its batch
    /// normalisation and its activation as one fused kernel ([`Node::Fused`](crate::Node::Fused)).
    /// The default, `true`, sees every site.
    fn wants(&self, site: &str) -> bool {
        let _ = site;
        true
    }

    /// Called by [`Graph`](crate::Graph) (and so by every model of the zoo) before each
    /// forward pass with the network's [`Network::resolve`](crate::Network::resolve), so that a
    /// hook may name sites by alias (`layer4`) and refuse names the network does not have.
    /// The default accepts anything.
    fn bind(&mut self, resolve: &dyn Fn(&str) -> Result<String>) -> Result<()> {
        let _ = resolve;
        Ok(())
    }
}

/// Any `FnMut(site, activation) -> Result<activation>` is a hook.
impl<F: FnMut(&str, Tensor) -> Result<Tensor>> Hook for F {
    fn visit(&mut self, site: &str, activation: Tensor) -> Result<Tensor> {
        self(site, activation)
    }
}

/// What [`Hooks`] does at one site.
#[derive(Debug, Clone)]
pub enum Action {
    /// Record the activation (see [`Hooks::activation`]).
    Read,
    /// Continue with this tensor instead (same shape; a different batch size is allowed).
    Replace(Tensor),
    /// Continue with `activation ⊙ mask` (the mask broadcasts, e.g. `(1, C, 1, 1)` per channel).
    Mask(Tensor),
    /// Make the gradient with respect to the activation available (see [`Hooks::gradient`]).
    Grad,
}

/// The standard hook: a list of [`Action`]s per site, applied in the order they were added.
///
/// Sites may be named by their native name or by an alias of the network (`layer4`): a
/// [`Graph`](crate::Graph) binds the aliases before its forward pass, and a name the network
/// does not have is refused there with the nearest valid names. (A hand-written
/// [`Network`](crate::Network) that does not call [`Hook::bind`] sees native names only.)
///
/// ```
/// use candle_core::{Device, Tensor};
/// use extremal_hook::{Graph, Hooks, Network, Node};
/// let graph = Graph::new(Node::seq("", vec![Node::layer("square", |x: &Tensor| x.sqr())]));
/// let x = candle_core::Var::new(&[3f64], &Device::Cpu)?;
/// let mut hooks = Hooks::new().grad("square");
/// let y = graph.forward_hooked(&x, &mut hooks)?;
/// let grads = (y * 5.0)?.sum_all()?.backward()?;
/// assert_eq!(hooks.gradient(&grads, "square")?.to_vec1::<f64>()?, vec![5.0]);
/// assert_eq!(grads.get(&x).unwrap().to_vec1::<f64>()?, vec![30.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct Hooks {
    actions: HashMap<String, Vec<Action>>,
    recorded: HashMap<String, Tensor>,
    taps: HashMap<String, Var>,
    visited: Vec<String>,
    /// Alias → native name, for the aliases the actions used.
    aliases: HashMap<String, String>,
    /// Whether every action's site has been resolved (reset when an action is added).
    bound: bool,
}

impl Hooks {
    /// No actions: the network runs unchanged.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `action` at `site`.
    pub fn with(mut self, site: &str, action: Action) -> Self {
        self.actions.entry(site.to_string()).or_default().push(action);
        self.bound = false;
        self
    }

    /// Records the activation at `site`.
    pub fn read(self, site: &str) -> Self {
        self.with(site, Action::Read)
    }

    /// Replaces the activation at `site`.
    pub fn replace(self, site: &str, value: Tensor) -> Self {
        self.with(site, Action::Replace(value))
    }

    /// Multiplies the activation at `site` by `mask` (broadcast).
    pub fn mask(self, site: &str, mask: Tensor) -> Self {
        self.with(site, Action::Mask(mask))
    }

    /// Records the activation at `site` and makes its gradient available after `backward`.
    pub fn grad(self, site: &str) -> Self {
        self.with(site, Action::Grad).with(site, Action::Read)
    }

    /// The sites that have an action.
    pub fn sites(&self) -> impl Iterator<Item = &str> {
        self.actions.keys().map(|s| s.as_str())
    }

    /// The sites the last forward pass crossed, in order.
    ///
    /// Sites inside a fused group of layers ([`Node::Fused`](crate::Node::Fused)) that no action
    /// of these hooks names are not computed, and so not listed.
    pub fn visited(&self) -> &[String] {
        &self.visited
    }

    /// The activation recorded at `site` (by [`Action::Read`] or [`Action::Grad`]), after
    /// any replacement or mask added before the read.
    pub fn activation(&self, site: &str) -> Option<&Tensor> {
        self.recorded.get(self.native(site))
    }

    /// `site`, or the native name it was bound to if it is an alias.
    fn native<'a>(&'a self, site: &'a str) -> &'a str {
        self.aliases.get(site).map_or(site, |s| s.as_str())
    }

    /// The gradient with respect to the activation at `site` (which needs [`Hooks::grad`]),
    /// from the gradients of a `backward` call on a scalar computed from the forward pass.
    ///
    /// # Shapes
    /// - returns: the shape of the activation at `site`.
    pub fn gradient(&self, grads: &GradStore, site: &str) -> Result<Tensor> {
        let tap = self.taps.get(self.native(site)).ok_or_else(|| Error::Site {
            site: site.to_string(),
            message: "no gradient tap here: add `Hooks::grad` for this site before the forward pass \
                      (a hand-written network that does not call `Hook::bind` needs the native name, \
                      which `Network::resolve` gives)"
                .into(),
        })?;
        match grads.get(tap.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => Ok(tap.as_tensor().zeros_like()?),
        }
    }
}

impl Hook for Hooks {
    fn wants(&self, site: &str) -> bool {
        self.actions.contains_key(site)
    }

    /// Moves the actions added under an alias to the native site (after the native name's
    /// own actions), and refuses names that are neither. Runs once per set of actions.
    fn bind(&mut self, resolve: &dyn Fn(&str) -> Result<String>) -> Result<()> {
        if self.bound {
            return Ok(());
        }
        let mut names: Vec<String> = self.actions.keys().cloned().collect();
        names.sort(); // a deterministic error when several names are wrong
        for name in names {
            let native = resolve(&name)?;
            if native != name {
                let moved = self.actions.remove(&name).unwrap_or_default();
                self.actions.entry(native.clone()).or_default().extend(moved);
                self.aliases.insert(name, native);
            }
        }
        self.bound = true;
        Ok(())
    }

    fn visit(&mut self, site: &str, mut x: Tensor) -> Result<Tensor> {
        self.visited.push(site.to_string());
        let Some(actions) = self.actions.get(site) else {
            return Ok(x);
        };
        for action in actions {
            match action {
                Action::Read => {
                    self.recorded.insert(site.to_string(), x.clone());
                }
                Action::Replace(v) => {
                    if v.dims().get(1..) != x.dims().get(1..) {
                        return Err(Error::Site {
                            site: site.to_string(),
                            message: format!(
                                "replacement of shape {:?} does not fit the activation {:?}",
                                v.dims(),
                                x.dims()
                            ),
                        });
                    }
                    x = v.to_dtype(x.dtype())?.to_device(x.device())?;
                }
                Action::Mask(m) => {
                    x = x.broadcast_mul(&m.to_dtype(x.dtype())?).map_err(|e| Error::Site {
                        site: site.to_string(),
                        message: format!(
                            "mask of shape {:?} does not broadcast to the activation {:?}: {e}",
                            m.dims(),
                            x.dims()
                        ),
                    })?;
                }
                Action::Grad => {
                    // x + 0, where the 0 is a variable: its gradient is the gradient at x, and
                    // gradients still flow on to everything before the site.
                    let tap = Var::zeros(x.shape(), x.dtype(), x.device())?;
                    x = x.add(tap.as_tensor())?;
                    self.taps.insert(site.to_string(), tap);
                }
            }
        }
        Ok(x)
    }
}
