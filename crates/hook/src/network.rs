use candle_core::Tensor;

use crate::{Error, Hook, Hooks, Result};

/// What the suffix of a network needs to run from a site: the activation there and the
/// tensors that the rest of the network still reads (the inputs of the enclosing residual
/// blocks and concatenations, outermost first).
#[derive(Debug, Clone)]
pub struct Prefix {
    pub(crate) site: String,
    pub(crate) activation: Tensor,
    pub(crate) saved: Vec<Tensor>,
}

impl Prefix {
    /// Builds a prefix by hand (for [`Network`] implementations).
    pub fn new(site: &str, activation: Tensor, saved: Vec<Tensor>) -> Self {
        Self {
            site: site.to_string(),
            activation,
            saved,
        }
    }

    /// The native name of the site.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The activation at the site, detached from the prefix's autograd graph.
    ///
    /// # Shapes
    /// - returns: the site's output shape, e.g. `(N, C, h, w)`.
    pub fn activation(&self) -> &Tensor {
        &self.activation
    }

    /// The other tensors the suffix reads.
    pub fn saved(&self) -> &[Tensor] {
        &self.saved
    }
}

/// A network whose sites are named.
///
/// Implementors provide [`Network::sites`] and [`Network::forward_hooked`]; the default
/// [`Network::prefix`] and [`Network::suffix`] are correct but re-run the whole network, so
/// implementations that can resume from a site (every [`crate::Graph`]) override them.
///
/// A network is shared between threads (`Send + Sync`): a channel search scores its sets in
/// runs side by side, one per thread.
pub trait Network: Send + Sync {
    /// Every site, in the order a forward pass reaches them (`input` first).
    fn sites(&self) -> Vec<String>;

    /// Alternative names: `(alias, native name)`, e.g. `("layer4", "_bn1.act")`.
    fn aliases(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Runs the network on `x`, calling `hook` at every site (`input` included).
    ///
    /// # Shapes
    /// - `x`: `(N, C, H, W)`.
    /// - returns: the network's output, `(N, classes)` for a classifier.
    fn forward_hooked(&self, x: &Tensor, hook: &mut dyn Hook) -> Result<Tensor>;

    /// Runs the network with no hooks.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_hooked(x, &mut Hooks::new())
    }

    /// The native name of `name` (a site or an alias), or an error listing the nearest names.
    fn resolve(&self, name: &str) -> Result<String> {
        if let Some((_, native)) = self.aliases().into_iter().find(|(a, _)| a == name) {
            return Ok(native);
        }
        let sites = self.sites();
        if sites.iter().any(|s| s == name) {
            return Ok(name.to_string());
        }
        let mut all = sites;
        all.extend(self.aliases().into_iter().map(|(a, _)| a));
        Err(Error::UnknownSite {
            name: name.to_string(),
            nearest: nearest_names(name, &all, 5),
        })
    }

    /// The activation at `site` (a name or an alias).
    ///
    /// # Shapes
    /// - `x`: `(N, C, H, W)`.
    fn activation(&self, x: &Tensor, site: &str) -> Result<Tensor> {
        Ok(self.prefix(x, site)?.activation)
    }

    /// The activation at `site`, differentiable with respect to `x` (unlike
    /// [`Network::prefix`], nothing is detached). The default runs the whole network;
    /// a [`crate::Graph`] stops at the site.
    ///
    /// # Shapes
    /// - `x`: `(N, C, H, W)`.
    /// - returns: the site's activation, batch `N`.
    fn forward_to(&self, x: &Tensor, site: &str) -> Result<Tensor> {
        let native = self.resolve(site)?;
        let mut hooks = Hooks::new().read(&native);
        self.forward_hooked(x, &mut hooks)?;
        hooks.activation(&native).cloned().ok_or_else(|| Error::Site {
            site: native.clone(),
            message: "the forward pass never reached this site".into(),
        })
    }

    /// Runs the prefix up to `site` and keeps what the suffix needs. The activation is
    /// detached: gradients taken through [`Network::suffix`] stop at the site.
    ///
    /// # Shapes
    /// - `x`: `(N, C, H, W)`.
    fn prefix(&self, x: &Tensor, site: &str) -> Result<Prefix> {
        let native = self.resolve(site)?;
        let mut hooks = Hooks::new().read(&native);
        self.forward_hooked(x, &mut hooks)?;
        let activation = hooks.activation(&native).cloned().ok_or_else(|| Error::Site {
            site: native.clone(),
            message: "the forward pass never reached this site".into(),
        })?;
        Ok(Prefix::new(&native, activation.detach(), vec![x.detach()]))
    }

    /// The receptive field of `site` for an `(H, W)` input, computed from the layers'
    /// footprints, or `None` when the network does not describe them (then
    /// [`crate::probe_region`] measures it). The default is `None`.
    fn receptive_field(&self, site: &str, input: (usize, usize)) -> Result<Option<crate::ReceptiveField>> {
        let _ = (site, input);
        Ok(None)
    }

    /// Runs the suffix from the site of `prefix`, with `activation` in place of the
    /// activation there; `hook` sees the sites after it. The batch size of `activation` may
    /// differ from the prefix's when the prefix's batch is 1 (several masks of one image).
    ///
    /// # Shapes
    /// - `activation`: the site's shape, with any batch size.
    fn suffix(&self, prefix: &Prefix, activation: &Tensor, hook: &mut dyn Hook) -> Result<Tensor> {
        let input = prefix.saved.first().ok_or_else(|| Error::Site {
            site: prefix.site.clone(),
            message: "this prefix holds no input".into(),
        })?;
        let input = crate::graph::fit_batch(input, activation.dim(0)?)?;
        hook.bind(&|name| self.resolve(name))?;
        let site = prefix.site.clone();
        let replacement = activation.clone();
        let mut started = false;
        let mut resume = |name: &str, x: Tensor| -> Result<Tensor> {
            if name == site {
                started = true;
                return Ok(replacement.clone());
            }
            if started {
                hook.visit(name, x)
            } else {
                Ok(x)
            }
        };
        self.forward_hooked(&input, &mut resume)
    }
}

/// The `k` names of `names` closest to `name` (edit distance; names sharing a prefix first).
pub fn nearest_names(name: &str, names: &[String], k: usize) -> Vec<String> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1; b.len() + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
            }
            prev = cur;
        }
        prev[b.len()]
    }
    let mut scored: Vec<(usize, &String)> = names.iter().map(|n| (distance(name, n), n)).collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(k).map(|(_, n)| n.clone()).collect()
}
