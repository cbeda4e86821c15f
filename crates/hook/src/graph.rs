use candle_core::{Module, Tensor};
use extremal_ops::Activation;

use crate::receptive::{self, Footprint, ReceptiveField, Walks};
use crate::{Error, Hook, Network, Prefix, Result};

/// One node of a [`Graph`]. A node with a non-empty name is a site.
pub enum Node {
    /// A layer: any candle [`Module`] (closures included).
    Layer {
        /// Site name, or empty.
        name: String,
        /// The computation.
        module: Box<dyn Module + Send + Sync>,
        /// How its output positions read its input (for receptive fields).
        footprint: Footprint,
    },
    /// Children run one after the other.
    Seq {
        /// Site name of the output, or empty.
        name: String,
        /// The children.
        children: Vec<Node>,
    },
    /// `post(body(x) + shortcut(x))`, with the identity when `shortcut` is `None`.
    Residual {
        /// Site name of the output, or empty.
        name: String,
        /// The main branch.
        body: Box<Node>,
        /// The projection branch, if any.
        shortcut: Option<Box<Node>>,
        /// An activation of the sum, computed in the same pass as the sum (none: the
        /// identity); not a site.
        activation: Activation,
        /// Applied after the sum and `activation`, if any; not a site. It must be pointwise
        /// (each output position reads its own input position), as receptive fields assume.
        post: Option<Box<dyn Module + Send + Sync>>,
    },
    /// A chain of layers (e.g. convolution, batch norm, ReLU) that `fused` computes in one
    /// go. The chain's sites stay addressable: the chain runs layer by layer when a hook wants
    /// a site inside it ([`Hook::wants`]), and `fused` runs otherwise, its output visiting the
    /// chain's last site. `fused` must compute the same function as the chain.
    Fused {
        /// The layers one by one.
        chain: Vec<Node>,
        /// The same computation in one module.
        fused: Box<dyn Module + Send + Sync>,
    },
    /// The branches all read the input; their outputs are concatenated along channels.
    Concat {
        /// Site name of the output, or empty.
        name: String,
        /// The branches.
        branches: Vec<Node>,
    },
}

impl Node {
    /// A layer node, its [`Footprint`] unknown (see [`Node::with_footprint`]).
    pub fn layer(name: &str, module: impl Module + Send + Sync + 'static) -> Self {
        Node::Layer {
            name: name.to_string(),
            module: Box::new(module),
            footprint: Footprint::Unknown,
        }
    }

    /// This node with `footprint` (a layer's; other nodes' footprints follow from their
    /// children, and they are returned unchanged).
    pub fn with_footprint(mut self, footprint: Footprint) -> Self {
        if let Node::Layer { footprint: f, .. } = &mut self {
            *f = footprint;
        }
        self
    }

    /// The receptive-field walk through this node: returns the state after it and whether
    /// `site` was reached (the state is then the site's).
    fn walk(&self, walks: Walks, site: &str, input: (usize, usize)) -> (Walks, bool) {
        let (out, _) = match self {
            Node::Layer { footprint, .. } => (receptive::through(walks, footprint, input), false),
            Node::Seq { children, .. } | Node::Fused { chain: children, .. } => {
                let mut w = walks;
                for c in children {
                    let (next, found) = c.walk(w, site, input);
                    if found {
                        return (next, true);
                    }
                    w = next;
                }
                (w, false)
            }
            Node::Residual { body, shortcut, .. } => {
                let (b, found) = body.walk(walks, site, input);
                if found {
                    return (b, true);
                }
                let s = match shortcut {
                    Some(s) => {
                        let (s, found) = s.walk(walks, site, input);
                        if found {
                            return (s, true);
                        }
                        s
                    }
                    None => walks,
                };
                // The post-activation is pointwise.
                (receptive::union(&[b, s]), false)
            }
            Node::Concat { branches, .. } => {
                let mut outs = Vec::with_capacity(branches.len());
                for b in branches {
                    let (o, found) = b.walk(walks, site, input);
                    if found {
                        return (o, true);
                    }
                    outs.push(o);
                }
                (receptive::union(&outs), false)
            }
        };
        (out, !self.name().is_empty() && self.name() == site)
    }

    /// A sequence node.
    pub fn seq(name: &str, children: Vec<Node>) -> Self {
        Node::Seq {
            name: name.to_string(),
            children,
        }
    }

    /// A residual node with no post-activation.
    pub fn residual(name: &str, body: Node, shortcut: Option<Node>) -> Self {
        Node::Residual {
            name: name.to_string(),
            body: Box::new(body),
            shortcut: shortcut.map(Box::new),
            activation: Activation::None,
            post: None,
        }
    }

    /// A residual node whose sum goes through `activation` (ResNet's ReLU), the two in one
    /// pass forward and one backward ([`extremal_ops::add_activation`]).
    pub fn residual_activation(name: &str, body: Node, shortcut: Option<Node>, activation: Activation) -> Self {
        Node::Residual {
            name: name.to_string(),
            body: Box::new(body),
            shortcut: shortcut.map(Box::new),
            activation,
            post: None,
        }
    }

    /// A residual node followed by `post`.
    pub fn residual_then(
        name: &str,
        body: Node,
        shortcut: Option<Node>,
        post: impl Module + Send + Sync + 'static,
    ) -> Self {
        Node::Residual {
            name: name.to_string(),
            body: Box::new(body),
            shortcut: shortcut.map(Box::new),
            activation: Activation::None,
            post: Some(Box::new(post)),
        }
    }

    /// A fused chain of layers (see [`Node::Fused`]).
    pub fn fused(chain: Vec<Node>, fused: impl Module + Send + Sync + 'static) -> Self {
        Node::Fused {
            chain,
            fused: Box::new(fused),
        }
    }

    /// A concatenation node.
    pub fn concat(name: &str, branches: Vec<Node>) -> Self {
        Node::Concat {
            name: name.to_string(),
            branches,
        }
    }

    /// The node's site name (empty if it is not a site).
    pub fn name(&self) -> &str {
        match self {
            Node::Layer { name, .. }
            | Node::Seq { name, .. }
            | Node::Residual { name, .. }
            | Node::Concat { name, .. } => name,
            Node::Fused { .. } => "",
        }
    }

    fn children(&self) -> Vec<&Node> {
        match self {
            Node::Layer { .. } => vec![],
            Node::Seq { children, .. } | Node::Fused { chain: children, .. } => children.iter().collect(),
            Node::Residual { body, shortcut, .. } => {
                let mut v = vec![body.as_ref()];
                v.extend(shortcut.as_deref());
                v
            }
            Node::Concat { branches, .. } => branches.iter().collect(),
        }
    }

    fn collect_sites(&self, out: &mut Vec<String>) {
        for c in self.children() {
            c.collect_sites(out);
        }
        if !self.name().is_empty() {
            out.push(self.name().to_string());
        }
    }

    /// The child indices from this node down to the node named `site`.
    fn path_to(&self, site: &str) -> Option<Vec<usize>> {
        if self.name() == site {
            return Some(vec![]);
        }
        for (i, c) in self.children().into_iter().enumerate() {
            if let Some(mut p) = c.path_to(site) {
                p.insert(0, i);
                return Some(p);
            }
        }
        None
    }

    fn visit(&self, y: Tensor, hook: &mut dyn Hook) -> Result<Tensor> {
        if self.name().is_empty() {
            Ok(y)
        } else {
            hook.visit(self.name(), y)
        }
    }

    fn forward(&self, x: &Tensor, hook: &mut dyn Hook) -> Result<Tensor> {
        let y = match self {
            Node::Layer { module, .. } => module.forward(x)?,
            Node::Seq { children, .. } => {
                let mut y = x.clone();
                for c in children {
                    y = c.forward(&y, hook)?;
                }
                y
            }
            Node::Fused { chain, fused } => {
                let (last, inner) = chain.split_last().expect("a fused chain is not empty");
                if inner.iter().any(|c| !c.name().is_empty() && hook.wants(c.name())) {
                    let mut y = x.clone();
                    for c in chain {
                        y = c.forward(&y, hook)?;
                    }
                    y
                } else {
                    last.visit(fused.forward(x)?, hook)?
                }
            }
            Node::Residual {
                body,
                shortcut,
                activation,
                post,
                ..
            } => {
                let b = body.forward(x, hook)?;
                let s = match shortcut {
                    Some(s) => s.forward(x, hook)?,
                    None => x.clone(),
                };
                finish_residual(&b, &s, *activation, post.as_deref())?
            }
            Node::Concat { branches, .. } => {
                let ys = branches
                    .iter()
                    .map(|b| b.forward(x, hook))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&ys, 1)?
            }
        };
        self.visit(y, hook)
    }

    /// Runs up to the end of the node at `path`, saving the inputs that the suffix re-reads.
    fn forward_until(&self, x: &Tensor, path: &[usize], saved: &mut Vec<Tensor>) -> Result<Tensor> {
        let Some((&i, rest)) = path.split_first() else {
            return self.forward(x, &mut Silent);
        };
        match self {
            Node::Layer { .. } => unreachable!("a layer has no children"),
            Node::Seq { children, .. } | Node::Fused { chain: children, .. } => {
                let mut y = x.clone();
                for c in &children[..i] {
                    y = c.forward(&y, &mut Silent)?;
                }
                children[i].forward_until(&y, rest, saved)
            }
            Node::Residual { .. } | Node::Concat { .. } => {
                saved.push(x.detach());
                self.children()[i].forward_until(x, rest, saved)
            }
        }
    }

    /// Runs from the node at `path`, whose output is `activation`, to the end of this node.
    fn resume(&self, path: &[usize], saved: &[Tensor], activation: &Tensor, hook: &mut dyn Hook) -> Result<Tensor> {
        let Some((&i, rest)) = path.split_first() else {
            return Ok(activation.clone());
        };
        let n = activation.dim(0)?;
        let y = match self {
            Node::Layer { .. } => unreachable!("a layer has no children"),
            Node::Seq { children, .. } | Node::Fused { chain: children, .. } => {
                let mut y = children[i].resume(rest, saved, activation, hook)?;
                for c in &children[i + 1..] {
                    y = c.forward(&y, hook)?;
                }
                y
            }
            Node::Residual {
                body,
                shortcut,
                activation: sum_activation,
                post,
                ..
            } => {
                let x = fit_batch(&saved[0], n)?;
                let (b, s) = if i == 0 {
                    let b = body.resume(rest, &saved[1..], activation, hook)?;
                    let s = match shortcut {
                        Some(s) => s.forward(&x, hook)?,
                        None => x,
                    };
                    (b, s)
                } else {
                    let b = body.forward(&x, hook)?;
                    let s = shortcut
                        .as_ref()
                        .expect("path")
                        .resume(rest, &saved[1..], activation, hook)?;
                    (b, s)
                };
                finish_residual(&b, &s, *sum_activation, post.as_deref())?
            }
            Node::Concat { branches, .. } => {
                let x = fit_batch(&saved[0], n)?;
                let mut ys = Vec::with_capacity(branches.len());
                for (j, b) in branches.iter().enumerate() {
                    ys.push(if j == i {
                        b.resume(rest, &saved[1..], activation, hook)?
                    } else {
                        b.forward(&x, hook)?
                    });
                }
                Tensor::cat(&ys, 1)?
            }
        };
        self.visit(y, hook)
    }
}

/// A hook that wants no site: the fastest forward pass (fused kernels everywhere).
pub struct Silent;

impl Hook for Silent {
    fn visit(&mut self, _site: &str, activation: Tensor) -> Result<Tensor> {
        Ok(activation)
    }

    fn wants(&self, _site: &str) -> bool {
        false
    }
}

fn finish_residual(
    b: &Tensor,
    s: &Tensor,
    activation: Activation,
    post: Option<&(dyn Module + Send + Sync)>,
) -> Result<Tensor> {
    let y = if extremal_ops::excitation_backprop() {
        // Excitation backprop shares the signal between the branches by their contributions.
        let sum = extremal_ops::excite_sum(b, s).map_err(candle_core::Error::from)?;
        activation.apply(&sum).map_err(candle_core::Error::from)?
    } else {
        extremal_ops::add_activation(b, s, activation).map_err(candle_core::Error::from)?
    };
    Ok(match post {
        Some(p) => p.forward(&y)?,
        None => y,
    })
}

/// Repeats a batch-1 tensor to batch `n` (a prefix computed once for several masks); a
/// scalar, which has no batch, is returned as it is.
pub fn fit_batch(t: &Tensor, n: usize) -> Result<Tensor> {
    if t.rank() == 0 {
        return Ok(t.clone());
    }
    let m = t.dim(0)?;
    if m == n {
        Ok(t.clone())
    } else if m == 1 {
        let mut dims = t.dims().to_vec();
        dims[0] = n;
        Ok(t.broadcast_as(dims)?.contiguous()?)
    } else {
        Err(Error::Site {
            site: String::new(),
            message: format!("cannot run a batch of {n} from a prefix of batch {m}"),
        })
    }
}

/// A network described as a tree of [`Node`]s, with an `input` site before the root.
pub struct Graph {
    root: Node,
    aliases: Vec<(String, String)>,
}

impl Graph {
    /// Wraps `root`.
    pub fn new(root: Node) -> Self {
        Self {
            root,
            aliases: Vec::new(),
        }
    }

    /// Adds an alias, e.g. `("layer4", "features.29")`.
    pub fn with_alias(mut self, alias: &str, native: &str) -> Self {
        self.aliases.push((alias.to_string(), native.to_string()));
        self
    }

    /// The root node.
    pub fn root(&self) -> &Node {
        &self.root
    }
}

impl Network for Graph {
    fn sites(&self) -> Vec<String> {
        let mut out = vec!["input".to_string()];
        self.root.collect_sites(&mut out);
        out
    }

    fn aliases(&self) -> Vec<(String, String)> {
        self.aliases.clone()
    }

    fn forward_hooked(&self, x: &Tensor, hook: &mut dyn Hook) -> Result<Tensor> {
        hook.bind(&|name| self.resolve(name))?;
        let x = hook.visit("input", x.clone())?;
        self.root.forward(&x, hook)
    }

    fn forward_to(&self, x: &Tensor, site: &str) -> Result<Tensor> {
        let native = self.resolve(site)?;
        if native == "input" {
            return Ok(x.clone());
        }
        let path = self.root.path_to(&native).expect("resolved sites are in the graph");
        self.root.forward_until(x, &path, &mut Vec::new())
    }

    fn prefix(&self, x: &Tensor, site: &str) -> Result<Prefix> {
        let native = self.resolve(site)?;
        if native == "input" {
            return Ok(Prefix::new("input", x.detach(), vec![]));
        }
        let path = self.root.path_to(&native).expect("resolved sites are in the graph");
        let mut saved = Vec::new();
        let activation = self.root.forward_until(x, &path, &mut saved)?;
        Ok(Prefix::new(&native, activation.detach(), saved))
    }

    fn receptive_field(&self, site: &str, input: (usize, usize)) -> Result<Option<ReceptiveField>> {
        let native = self.resolve(site)?;
        let start = receptive::start(input);
        if native == "input" {
            return Ok(receptive::finish(start, input));
        }
        let (walks, found) = self.root.walk(start, &native, input);
        Ok(if found { receptive::finish(walks, input) } else { None })
    }

    fn suffix(&self, prefix: &Prefix, activation: &Tensor, hook: &mut dyn Hook) -> Result<Tensor> {
        hook.bind(&|name| self.resolve(name))?;
        if prefix.site == "input" {
            return self.root.forward(activation, hook);
        }
        let path = self.root.path_to(&prefix.site).ok_or_else(|| Error::Site {
            site: prefix.site.clone(),
            message: "this prefix comes from another network".into(),
        })?;
        self.root.resume(&path, &prefix.saved, activation, hook)
    }
}
