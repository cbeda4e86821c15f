use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use extremal_hook::{fit_batch, Hook, Network, Prefix, Silent};
use extremal_ops::Activation;

use crate::names::{module_paths, number_calls};
use crate::ops::{self, Consts, Op, RunCtx};
use crate::proto::{attribute_type, GraphProto, ModelProto, NodeProto};
use crate::value::{Ints, Value};
use crate::{load, Error, Result};

/// The oldest and newest default-domain opsets accepted.
const OPSETS: std::ops::RangeInclusive<i64> = 7..=25;

/// One operator call of the graph.
struct Step {
    op: Op,
    /// Value slots read (`None`: an absent optional input).
    inputs: Vec<Option<usize>>,
    /// Value slots written.
    outputs: Vec<usize>,
    /// The node's name, for errors.
    node: String,
    op_type: String,
    /// A convolution chain that starts here and can run as one kernel.
    chain: Option<Chain>,
}

/// Convolution → batch norm → activation, run as one kernel when no hook wants the inner sites.
struct Chain {
    /// The later steps of the chain.
    members: Vec<usize>,
    /// The slots inside the chain (all but the last output).
    inner: Vec<usize>,
    /// The chain's output slot.
    out: usize,
    fused: Op,
}

/// An ONNX model as a [`Network`] whose every node output is a site.
///
/// Site names, for each node output (float tensors; shape computations on integers are not
/// sites):
/// - `M` for every module `M` (a PyTorch module path) whose last node it is, innermost first:
///   the output of ResNet's last ReLU is `layer4.2.relu#3`, then `layer4.2`, then `layer4`;
///   a module called several times has one site per call, `path`, `path#2`, … in call order;
/// - otherwise the raw ONNX value name (`/layer1/layer1.0/Add_output_0`);
/// - the raw value name is also an alias of every output that has a module name, and the
///   convolution's own path (from its weight's name) is an alias of a convolution into which
///   the exporter folded a batch norm (the dynamo exporter names the fused node after the norm).
///
/// Convolutions followed by a batch norm and a ReLU/ReLU6 run as one kernel unless a hook
/// wants a site inside the chain; the values are the same either way.
pub struct OnnxNetwork {
    steps: Vec<Step>,
    /// Constant values by slot (initializers, `Constant` nodes, folded subgraphs).
    constants: Vec<Option<Value>>,
    input_slot: usize,
    output_slot: usize,
    /// The static input shape of the file, `None` for symbolic dimensions.
    input_shape: Vec<Option<usize>>,
    /// The output shape the file declares, if it declares one.
    output_shape: Option<Vec<Option<usize>>>,
    /// Site names of each slot, in the order they are visited (innermost module first).
    names: Vec<Vec<String>>,
    /// Native site name → slot.
    site_slot: HashMap<String, usize>,
    /// Sites in forward order.
    sites: Vec<String>,
    aliases: Vec<(String, String)>,
    /// For each slot, the step that writes it.
    producer: Vec<Option<usize>>,
    /// For each slot, the last step that reads it (`usize::MAX`: the graph output).
    last_use: Vec<usize>,
    dtype: DType,
    device: Device,
    opset: i64,
    producer_name: String,
}

impl OnnxNetwork {
    /// Loads the model at `path` (external data is read from its folder), with parameters of
    /// `dtype` on `device`.
    pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: shown.clone(),
            source,
        })?;
        let dir = path
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
        Self::build(&bytes, dir, &shown, dtype, device)
    }

    /// Loads a model from its bytes; `dir` is where its external data files are, if any.
    pub fn from_bytes(bytes: &[u8], dir: Option<&Path>, dtype: DType, device: &Device) -> Result<Self> {
        Self::build(bytes, dir, "<memory>", dtype, device)
    }

    fn build(bytes: &[u8], dir: Option<&Path>, shown: &str, dtype: DType, device: &Device) -> Result<Self> {
        let invalid = |message: String| Error::Invalid {
            path: shown.to_string(),
            message,
        };
        if !matches!(dtype, DType::F32 | DType::F64) {
            return Err(invalid(format!("dtype {dtype:?} is not supported (f32 or f64)")));
        }
        let model = load::decode(bytes).map_err(invalid)?;
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version)
            .ok_or_else(|| invalid("no default-domain opset: this is not an ONNX model".into()))?;
        if !OPSETS.contains(&opset) {
            return Err(invalid(format!(
                "opset {opset} is not supported (opsets {} to {}); re-export with `opset_version=17`",
                OPSETS.start(),
                OPSETS.end()
            )));
        }
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| invalid("the file holds no graph".into()))?;
        Builder::new(shown, opset, dtype, device).run(&model, graph, dir)
    }

    /// The input shape the file declares: `None` for symbolic (dynamic) dimensions.
    pub fn input_shape(&self) -> &[Option<usize>] {
        &self.input_shape
    }

    /// The output shape the file declares (`None` inside: symbolic), if it declares one.
    pub fn output_shape(&self) -> Option<&[Option<usize>]> {
        self.output_shape.as_deref()
    }

    /// The default-domain opset of the file.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    /// The program that wrote the file (`pytorch`, `tf2onnx`, …).
    pub fn producer(&self) -> &str {
        &self.producer_name
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the parameters live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The number of operator steps run by a forward pass (after constant folding).
    pub fn steps(&self) -> usize {
        self.steps.len()
    }

    fn run_error(&self, s: &Step, message: String) -> Error {
        Error::Run {
            node: s.node.clone(),
            op: s.op_type.clone(),
            message,
        }
    }

    /// Runs the steps for which `run[i]` holds, in order, on `env`, visiting sites with
    /// `hook`. `keep` slots are not freed after their last use.
    fn execute(&self, env: &mut [Option<Value>], run: &[bool], hook: &mut dyn Hook, keep: &[bool]) -> Result<()> {
        let ctx = RunCtx {
            dtype: self.dtype,
            device: &self.device,
        };
        let mut skip = vec![false; self.steps.len()];
        for (i, s) in self.steps.iter().enumerate() {
            if !run[i] || skip[i] {
                continue;
            }
            if let Some(ch) = &s.chain {
                let all_run = ch.members.iter().all(|&m| run[m]);
                let wanted = ch
                    .inner
                    .iter()
                    .any(|&slot| self.names[slot].iter().any(|n| hook.wants(n)));
                if all_run && !wanted {
                    let inputs = [env[s.inputs[0].expect("a convolution has an input")].clone()];
                    let out = ch
                        .fused
                        .run(&inputs, &ctx, Activation::None)
                        .map_err(|m| self.run_error(s, m))?;
                    let y = out.into_iter().next().expect("one output");
                    env[ch.out] = Some(self.visit(ch.out, y, hook)?);
                    for &m in &ch.members {
                        skip[m] = true;
                    }
                    self.free(env, i, s, keep);
                    for &m in &ch.members {
                        self.free(env, m, &self.steps[m], keep);
                    }
                    continue;
                }
            }
            let inputs: Vec<Option<Value>> = s.inputs.iter().map(|i| i.and_then(|i| env[i].clone())).collect();
            let outs =
                s.op.run(&inputs, &ctx, Activation::None)
                    .map_err(|m| self.run_error(s, m))?;
            if outs.len() != s.outputs.len() {
                return Err(self.run_error(s, format!("gave {} outputs, expected {}", outs.len(), s.outputs.len())));
            }
            for (&slot, v) in s.outputs.iter().zip(outs) {
                env[slot] = Some(self.visit(slot, v, hook)?);
            }
            self.free(env, i, s, keep);
        }
        Ok(())
    }

    fn visit(&self, slot: usize, v: Value, hook: &mut dyn Hook) -> Result<Value> {
        let Value::Float(mut t) = v else { return Ok(v) };
        for n in &self.names[slot] {
            t = hook.visit(n, t)?;
        }
        Ok(Value::Float(t))
    }

    /// Frees the inputs of step `i` that no later step reads.
    fn free(&self, env: &mut [Option<Value>], i: usize, s: &Step, keep: &[bool]) {
        for &slot in s.inputs.iter().flatten() {
            if self.last_use[slot] == i && !keep[slot] && self.constants[slot].is_none() {
                env[slot] = None;
            }
        }
    }

    fn fresh_env(&self) -> Vec<Option<Value>> {
        self.constants.clone()
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        if dims.len() != self.input_shape.len() {
            return Err(Error::Run {
                node: "input".into(),
                op: "input".into(),
                message: format!("the model takes a rank-{} input, got {dims:?}", self.input_shape.len()),
            });
        }
        // The channel count is fixed; the batch and the image size may differ from the export.
        if let (Some(Some(c)), Some(&got)) = (self.input_shape.get(1), dims.get(1)) {
            if *c != got {
                return Err(Error::Run {
                    node: "input".into(),
                    op: "input".into(),
                    message: format!("the model takes {c} input channels, got {got}"),
                });
            }
        }
        Ok(())
    }

    /// The steps that depend on `slot` (directly or not).
    fn downstream(&self, slot: usize) -> Vec<bool> {
        let mut dirty = vec![false; self.names.len()];
        dirty[slot] = true;
        let mut run = vec![false; self.steps.len()];
        for (i, s) in self.steps.iter().enumerate() {
            if s.inputs.iter().flatten().any(|&v| dirty[v]) {
                run[i] = true;
                for &o in &s.outputs {
                    dirty[o] = true;
                }
            }
        }
        run
    }

    /// The steps `slot` depends on.
    fn upstream(&self, slot: usize) -> Vec<bool> {
        let mut need = vec![false; self.names.len()];
        need[slot] = true;
        let mut run = vec![false; self.steps.len()];
        for (i, s) in self.steps.iter().enumerate().rev() {
            if s.outputs.iter().any(|&o| need[o]) {
                run[i] = true;
                for &v in s.inputs.iter().flatten() {
                    need[v] = true;
                }
            }
        }
        run
    }

    fn slot_of(&self, native: &str) -> usize {
        if native == "input" {
            self.input_slot
        } else {
            self.site_slot[native]
        }
    }

    /// The slots a suffix from `slot` reads that its prefix computes, in slot order.
    fn boundary(&self, slot: usize, suffix: &[bool]) -> Vec<usize> {
        let mut b: Vec<usize> = self
            .steps
            .iter()
            .enumerate()
            .filter(|(i, _)| suffix[*i])
            .flat_map(|(_, s)| s.inputs.iter().flatten().copied())
            .filter(|&v| v != slot && self.constants[v].is_none())
            .filter(|&v| v == self.input_slot || self.producer[v].is_some_and(|p| !suffix[p]))
            .collect();
        b.sort();
        b.dedup();
        b
    }

    fn output(&self, env: &mut [Option<Value>]) -> Result<Tensor> {
        match env[self.output_slot].take() {
            Some(Value::Float(t)) => Ok(t),
            Some(Value::Int(_)) => Err(Error::Run {
                node: "output".into(),
                op: "output".into(),
                message: "the graph's output is an integer tensor".into(),
            }),
            None => Err(Error::Run {
                node: "output".into(),
                op: "output".into(),
                message: "the graph's output was not computed".into(),
            }),
        }
    }
}

impl Network for OnnxNetwork {
    fn sites(&self) -> Vec<String> {
        self.sites.clone()
    }

    fn aliases(&self) -> Vec<(String, String)> {
        self.aliases.clone()
    }

    fn forward_hooked(&self, x: &Tensor, hook: &mut dyn Hook) -> extremal_hook::Result<Tensor> {
        hook.bind(&|name| self.resolve(name))?;
        self.check_input(x)?;
        self.by_image(x.dim(0)?, |b| self.forward_hooked_one(&narrow(x, b)?, hook))
    }

    fn forward_to(&self, x: &Tensor, site: &str) -> extremal_hook::Result<Tensor> {
        self.check_input(x)?;
        self.by_image(x.dim(0)?, |b| self.forward_to_one(&narrow(x, b)?, site))
    }

    fn prefix(&self, x: &Tensor, site: &str) -> extremal_hook::Result<Prefix> {
        self.check_input(x)?;
        let n = x.dim(0)?;
        if !self.one_by_one(n)? {
            return self.prefix_one(x, site);
        }
        // A file that fixes its batch at 1: one prefix per image, stacked.
        let parts: Vec<Prefix> = (0..n)
            .map(|b| self.prefix_one(&x.narrow(0, b, 1)?, site))
            .collect::<extremal_hook::Result<_>>()?;
        let cat = |ts: Vec<&Tensor>| Tensor::cat(&ts, 0);
        let activation = cat(parts.iter().map(|p| p.activation()).collect())?;
        let saved = (0..parts[0].saved().len())
            .map(|i| {
                let t = &parts[0].saved()[i];
                if t.dtype() == DType::I64 {
                    Ok(t.clone())
                } else {
                    cat(parts.iter().map(|p| &p.saved()[i]).collect())
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Prefix::new(parts[0].site(), activation, saved))
    }

    fn suffix(&self, prefix: &Prefix, activation: &Tensor, hook: &mut dyn Hook) -> extremal_hook::Result<Tensor> {
        hook.bind(&|name| self.resolve(name))?;
        let n = activation.dim(0)?;
        if !self.one_by_one(n)? {
            return self.suffix_one(prefix, activation, hook);
        }
        let m = prefix.activation().dim(0)?;
        self.by_image(n, |b| {
            let pick = |t: &Tensor| -> candle_core::Result<Tensor> {
                if t.dtype() == DType::I64 || t.rank() == 0 || t.dim(0)? == 1 {
                    Ok(t.clone())
                } else {
                    t.narrow(0, b, 1)
                }
            };
            let own = if m == 1 {
                prefix.clone()
            } else {
                let saved = prefix
                    .saved()
                    .iter()
                    .map(pick)
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Prefix::new(prefix.site(), pick(prefix.activation())?, saved)
            };
            self.suffix_one(&own, &narrow(activation, b)?, hook)
        })
    }
}

impl OnnxNetwork {
    /// Whether a batch of `n` runs image by image: the file fixes its batch at 1 (a static
    /// export; its reshapes and index tables assume one image). A file that fixes another
    /// batch size runs only that one.
    fn one_by_one(&self, n: usize) -> extremal_hook::Result<bool> {
        match self.input_shape.first().copied().flatten() {
            Some(1) => Ok(n > 1),
            Some(b) if b != n => Err(Error::Run {
                node: "input".into(),
                op: "input".into(),
                message: format!(
                    "the file fixes its batch size at {b}, the input has {n}: re-export with batch 1 or a dynamic batch"
                ),
            }
            .into()),
            _ => Ok(false),
        }
    }

    /// Runs `one(b)` on each image `b` of a batch of `n` when the file needs it, else once on
    /// the whole batch (`b == usize::MAX`), and checks that the output keeps the batch.
    fn by_image(
        &self,
        n: usize,
        mut one: impl FnMut(usize) -> extremal_hook::Result<Tensor>,
    ) -> extremal_hook::Result<Tensor> {
        let y = if self.one_by_one(n)? {
            let parts = (0..n).map(&mut one).collect::<extremal_hook::Result<Vec<_>>>()?;
            Tensor::cat(&parts, 0)?
        } else {
            one(usize::MAX)?
        };
        if y.rank() == 0 || y.dim(0)? != n {
            return Err(Error::Run {
                node: "output".into(),
                op: "output".into(),
                message: format!(
                    "a batch of {n} gave an output of shape {:?}: the file fixes its batch size; re-export with a dynamic batch",
                    y.dims()
                ),
            }
            .into());
        }
        Ok(y)
    }
}

/// Image `b` of `t` (all of it for `usize::MAX`).
fn narrow(t: &Tensor, b: usize) -> candle_core::Result<Tensor> {
    if b == usize::MAX {
        Ok(t.clone())
    } else {
        t.narrow(0, b, 1)
    }
}

impl OnnxNetwork {
    fn forward_hooked_one(&self, x: &Tensor, hook: &mut dyn Hook) -> extremal_hook::Result<Tensor> {
        let x = hook.visit("input", x.to_dtype(self.dtype)?)?;
        let mut env = self.fresh_env();
        env[self.input_slot] = Some(Value::Float(x));
        let keep = vec![false; env.len()];
        self.execute(&mut env, &vec![true; self.steps.len()], hook, &keep)?;
        Ok(self.output(&mut env)?)
    }

    fn forward_to_one(&self, x: &Tensor, site: &str) -> extremal_hook::Result<Tensor> {
        let native = self.resolve(site)?;
        let slot = self.slot_of(&native);
        let mut env = self.fresh_env();
        env[self.input_slot] = Some(Value::Float(x.to_dtype(self.dtype)?));
        let mut keep = vec![false; env.len()];
        keep[slot] = true;
        let mut silent = Silent;
        self.execute(&mut env, &self.upstream(slot), &mut silent, &keep)?;
        match env[slot].take() {
            Some(Value::Float(t)) => Ok(t),
            _ => Err(Error::Hook(extremal_hook::Error::Site {
                site: native,
                message: "the forward pass never reached this site".into(),
            })
            .into()),
        }
    }

    fn prefix_one(&self, x: &Tensor, site: &str) -> extremal_hook::Result<Prefix> {
        let native = self.resolve(site)?;
        let x = x.to_dtype(self.dtype)?;
        if native == "input" {
            return Ok(Prefix::new("input", x.detach(), vec![]));
        }
        let slot = self.slot_of(&native);
        let suffix = self.downstream(slot);
        let prefix_steps: Vec<bool> = suffix.iter().map(|s| !s).collect();
        let boundary = self.boundary(slot, &suffix);
        let mut keep = vec![false; self.names.len()];
        keep[slot] = true;
        for &b in &boundary {
            keep[b] = true;
        }
        let mut env = self.fresh_env();
        env[self.input_slot] = Some(Value::Float(x.clone()));
        self.execute(&mut env, &prefix_steps, &mut Silent, &keep)?;
        let activation = match &env[slot] {
            Some(Value::Float(t)) => t.detach(),
            _ => {
                return Err(extremal_hook::Error::Site {
                    site: native,
                    message: "the prefix did not compute this site".into(),
                })
            }
        };
        let mut saved = Vec::with_capacity(boundary.len());
        for b in boundary {
            saved.push(match &env[b] {
                Some(Value::Float(t)) => t.detach(),
                Some(Value::Int(i)) => i.to_i64_tensor(&Device::Cpu)?,
                None => {
                    return Err(extremal_hook::Error::Site {
                        site: native,
                        message: "the prefix lost a value the suffix needs".into(),
                    })
                }
            });
        }
        Ok(Prefix::new(&native, activation, saved))
    }

    fn suffix_one(&self, prefix: &Prefix, activation: &Tensor, hook: &mut dyn Hook) -> extremal_hook::Result<Tensor> {
        let native = prefix.site();
        let Some(&slot) = self.site_slot.get(native).or(if native == "input" {
            Some(&self.input_slot)
        } else {
            None
        }) else {
            return Err(extremal_hook::Error::Site {
                site: native.to_string(),
                message: "this prefix comes from another network".into(),
            });
        };
        let n = activation.dim(0)?;
        let mut env = self.fresh_env();
        let suffix = self.downstream(slot);
        if native != "input" {
            let boundary = self.boundary(slot, &suffix);
            if boundary.len() != prefix.saved().len() {
                return Err(extremal_hook::Error::Site {
                    site: native.to_string(),
                    message: "this prefix comes from another network".into(),
                });
            }
            for (b, t) in boundary.into_iter().zip(prefix.saved()) {
                env[b] = Some(if t.dtype() == DType::I64 {
                    Value::Int(Ints::from_i64_tensor(t)?)
                } else {
                    Value::Float(fit_batch(t, n)?)
                });
            }
        }
        // The names of the site's slot after the prefix's own are still ahead of the suffix
        // (`layer4` after `layer4.2`).
        let mut a = activation.clone();
        let names = &self.names[slot];
        if let Some(pos) = names.iter().position(|s| s == native) {
            for later in &names[pos + 1..] {
                a = hook.visit(later, a)?;
            }
        }
        env[slot] = Some(Value::Float(a));
        let keep = vec![false; env.len()];
        self.execute(&mut env, &suffix, hook, &keep)?;
        Ok(self.output(&mut env)?)
    }
}

/// Builds an [`OnnxNetwork`] from a decoded model.
struct Builder<'a> {
    shown: &'a str,
    opset: i64,
    dtype: DType,
    device: &'a Device,
    slots: HashMap<String, usize>,
    constants: Vec<Option<Value>>,
}

impl<'a> Builder<'a> {
    fn new(shown: &'a str, opset: i64, dtype: DType, device: &'a Device) -> Self {
        Self {
            shown,
            opset,
            dtype,
            device,
            slots: HashMap::new(),
            constants: Vec::new(),
        }
    }

    fn invalid(&self, message: impl Into<String>) -> Error {
        Error::Invalid {
            path: self.shown.to_string(),
            message: message.into(),
        }
    }

    fn unsupported(&self, node: &NodeProto, message: impl Into<String>) -> Error {
        Error::Unsupported {
            path: self.shown.to_string(),
            node: node_name(node),
            op: if node.domain.is_empty() || node.domain == "ai.onnx" {
                node.op_type.clone()
            } else {
                format!("{}::{}", node.domain, node.op_type)
            },
            opset: self.opset,
            message: message.into(),
        }
    }

    fn new_slot(&mut self, name: &str, value: Option<Value>) -> Result<usize> {
        if self.slots.contains_key(name) {
            return Err(self.invalid(format!("value `{name}` is defined twice")));
        }
        let s = self.constants.len();
        self.slots.insert(name.to_string(), s);
        self.constants.push(value);
        Ok(s)
    }

    fn run(mut self, model: &ModelProto, graph: &GraphProto, dir: Option<&Path>) -> Result<OnnxNetwork> {
        // Initializers.
        for t in &graph.initializer {
            if t.name.is_empty() {
                return Err(self.invalid("an initializer has no name"));
            }
            let v = load::tensor_value(t, dir, self.dtype, self.device)
                .map_err(|m| self.invalid(format!("initializer `{}`: {m}", t.name)))?;
            self.new_slot(&t.name, Some(v))?;
        }
        // The one image input.
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !self.slots.contains_key(&i.name))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(self.invalid(format!(
                "the graph has {} inputs besides its weights; extremal explains models with one image input",
                inputs.len()
            )));
        };
        let ty = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        if let Some(t) = ty {
            if !matches!(t.elem_type, 1 | 10 | 11 | 16) {
                return Err(self.invalid(format!("the input `{}` is not a float tensor", input.name)));
            }
        }
        let input_shape: Vec<Option<usize>> = ty
            .and_then(|t| t.shape.as_ref())
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| d.dim_value.and_then(|v| usize::try_from(v).ok()).filter(|&v| v > 0))
                    .collect()
            })
            .unwrap_or_else(|| vec![None; 4]);
        if input_shape.len() != 4 {
            return Err(self.invalid(format!(
                "the input `{}` has rank {}; extremal explains image models with an (N, C, H, W) input",
                input.name,
                input_shape.len()
            )));
        }
        let input_slot = self.new_slot(&input.name, None)?;
        let output_name = graph
            .output
            .first()
            .map(|o| o.name.clone())
            .ok_or_else(|| self.invalid("the graph has no output"))?;
        let output_shape = graph.output[0]
            .r#type
            .as_ref()
            .and_then(|t| t.tensor_type.as_ref())
            .and_then(|t| t.shape.as_ref())
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| d.dim_value.and_then(|v| usize::try_from(v).ok()).filter(|&v| v > 0))
                    .collect::<Vec<_>>()
            });

        // Nodes: constants are evaluated, nodes that read only constants are folded, the rest
        // become steps.
        let functions: HashSet<(&str, &str)> = model
            .functions
            .iter()
            .map(|f| (f.domain.as_str(), f.name.as_str()))
            .collect();
        let mut steps: Vec<Step> = Vec::new();
        let mut step_nodes: Vec<&NodeProto> = Vec::new();
        for node in &graph.node {
            if !(node.domain.is_empty() || node.domain == "ai.onnx") {
                let what = if functions.contains(&(node.domain.as_str(), node.op_type.as_str())) {
                    "a model-local function"
                } else {
                    "an operator outside the default ONNX domain"
                };
                return Err(self.unsupported(node, format!("{what} is not supported")));
            }
            if node.output.is_empty() {
                return Err(self.invalid(format!("node `{}` has no output", node_name(node))));
            }
            if node.op_type == "Constant" {
                let v = self.constant(node)?;
                self.new_slot(&node.output[0], Some(v))?;
                continue;
            }
            let mut ins = Vec::with_capacity(node.input.len());
            for name in &node.input {
                if name.is_empty() {
                    ins.push(None);
                } else {
                    let s = *self.slots.get(name).ok_or_else(|| {
                        self.invalid(format!(
                            "node `{}` reads `{name}`, which no earlier node produces (is the graph sorted?)",
                            node_name(node)
                        ))
                    })?;
                    ins.push(Some(s));
                }
            }
            let consts = Consts {
                values: ins.iter().map(|s| s.and_then(|s| self.constants[s].as_ref())).collect(),
                present: ins.iter().map(|s| s.is_some()).collect(),
            };
            let op = ops::build(node, &consts, self.opset, self.dtype).map_err(|m| self.unsupported(node, m))?;
            let foldable = ins.iter().flatten().all(|&s| self.constants[s].is_some());
            if foldable {
                let ctx = RunCtx {
                    dtype: self.dtype,
                    device: self.device,
                };
                let vals: Vec<Option<Value>> = ins.iter().map(|s| s.and_then(|s| self.constants[s].clone())).collect();
                let outs = op
                    .run(&vals, &ctx, Activation::None)
                    .map_err(|m| self.invalid(format!("node `{}` ({}): {m}", node_name(node), node.op_type)))?;
                for (name, v) in node.output.iter().zip(outs) {
                    if !name.is_empty() {
                        self.new_slot(name, Some(v))?;
                    }
                }
                continue;
            }
            let mut outs = Vec::with_capacity(node.output.len());
            for name in &node.output {
                if name.is_empty() {
                    return Err(self.unsupported(node, "unnamed (unused) outputs are not supported"));
                }
                outs.push(self.new_slot(name, None)?);
            }
            steps.push(Step {
                op,
                inputs: ins,
                outputs: outs,
                node: node_name(node),
                op_type: node.op_type.clone(),
                chain: None,
            });
            step_nodes.push(node);
        }
        let output_slot = *self
            .slots
            .get(&output_name)
            .ok_or_else(|| self.invalid(format!("the output `{output_name}` is never produced")))?;
        let n_slots = self.constants.len();

        // Which slots hold float tensors, who writes and who reads each.
        let mut is_float: Vec<Option<bool>> = self
            .constants
            .iter()
            .map(|c| c.as_ref().map(|v| matches!(v, Value::Float(_))))
            .collect();
        is_float[input_slot] = Some(true);
        let mut producer = vec![None; n_slots];
        let mut last_use = vec![0usize; n_slots];
        let mut readers = vec![0usize; n_slots];
        for (i, s) in steps.iter().enumerate() {
            let kinds: Vec<Option<bool>> = s.inputs.iter().map(|v| v.and_then(|v| is_float[v])).collect();
            let f = s.op.output_is_float(&kinds);
            for &o in &s.outputs {
                is_float[o] = Some(f);
                producer[o] = Some(i);
            }
            for &v in s.inputs.iter().flatten() {
                last_use[v] = i;
                readers[v] += 1;
            }
        }
        last_use[output_slot] = usize::MAX;
        readers[output_slot] += 1;
        if producer[output_slot].is_none() && output_slot != input_slot {
            return Err(self.invalid("the output is a constant"));
        }

        // Names.
        let slot_names: Vec<String> = {
            let mut v = vec![String::new(); n_slots];
            for (name, &s) in &self.slots {
                v[s] = name.clone();
            }
            v
        };
        let mut seen = HashSet::new();
        let raw_paths: Vec<Vec<String>> = step_nodes
            .iter()
            .map(|n| module_paths(n, &mut seen).unwrap_or_default())
            .collect();
        let paths = number_calls(&raw_paths);
        let mut last_of: HashMap<&str, usize> = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            if s.outputs.len() == 1 && is_float[s.outputs[0]] == Some(true) {
                for m in &paths[i] {
                    last_of.insert(m.as_str(), i);
                }
            }
        }
        let mut names: Vec<Vec<String>> = vec![Vec::new(); n_slots];
        names[input_slot] = vec!["input".to_string()];
        let mut aliases: Vec<(String, String)> = Vec::new();
        let mut sites = vec!["input".to_string()];
        let mut taken: HashSet<String> = HashSet::from(["input".to_string()]);
        let mut alias_wanted: Vec<(String, String)> = Vec::new();
        if slot_names[input_slot] != "input" {
            alias_wanted.push((slot_names[input_slot].clone(), "input".into()));
        }
        for (i, s) in steps.iter().enumerate() {
            for &o in &s.outputs {
                if is_float[o] != Some(true) {
                    continue;
                }
                let raw = slot_names[o].clone();
                let mut own: Vec<String> = Vec::new();
                if s.outputs.len() == 1 {
                    for m in paths[i].iter().rev() {
                        if last_of.get(m.as_str()) == Some(&i) && !taken.contains(m) {
                            own.push(m.clone());
                        }
                    }
                }
                if own.is_empty() {
                    own.push(raw.clone());
                } else {
                    alias_wanted.push((raw.clone(), own[0].clone()));
                }
                // A convolution the exporter merged with its batch norm is named after the
                // norm; its weight's name gives the convolution's own path.
                if s.op_type == "Conv" {
                    if let Some(conv_path) = s
                        .inputs
                        .get(1)
                        .copied()
                        .flatten()
                        .and_then(|w| slot_names[w].strip_suffix(".weight").map(str::to_string))
                    {
                        if !own.contains(&conv_path) && paths[i].last().is_some_and(|m| m != &conv_path) {
                            alias_wanted.push((conv_path, own[0].clone()));
                        }
                    }
                }
                for n in &own {
                    taken.insert(n.clone());
                    sites.push(n.clone());
                }
                names[o] = own;
            }
        }
        let mut alias_taken: HashSet<String> = HashSet::new();
        for (a, n) in alias_wanted {
            if !taken.contains(&a) && alias_taken.insert(a.clone()) {
                aliases.push((a, n));
            }
        }
        let site_slot: HashMap<String, usize> = names
            .iter()
            .enumerate()
            .flat_map(|(s, ns)| ns.iter().map(move |n| (n.clone(), s)))
            .filter(|(n, _)| n != "input")
            .collect();

        // Convolution chains.
        let consumers = |slot: usize, steps: &[Step]| -> Vec<usize> {
            steps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.inputs.iter().flatten().any(|&v| v == slot))
                .map(|(j, _)| j)
                .collect()
        };
        for i in 0..steps.len() {
            if !matches!(steps[i].op, Op::Conv(..)) {
                continue;
            }
            let mut members = Vec::new();
            let mut inner = Vec::new();
            let mut cur = steps[i].outputs[0];
            let mut bn = None;
            let mut act = Activation::None;
            let single = |slot: usize, steps: &[Step]| -> Option<usize> {
                if readers[slot] != 1 || slot == output_slot {
                    return None;
                }
                let c = consumers(slot, steps);
                (c.len() == 1 && steps[c[0]].inputs.first() == Some(&Some(slot))).then(|| c[0])
            };
            if let Some(j) = single(cur, &steps) {
                if matches!(steps[j].op, Op::BatchNorm(_)) {
                    bn = Some(j);
                    members.push(j);
                    inner.push(cur);
                    cur = steps[j].outputs[0];
                }
            }
            if let Some(j) = single(cur, &steps) {
                if let Some(a) = ops::fusable_activation(&steps[j].op) {
                    act = a;
                    members.push(j);
                    inner.push(cur);
                    cur = steps[j].outputs[0];
                }
            }
            if members.is_empty() {
                continue;
            }
            let Some(fused) = ops::fuse(&steps[i].op, bn.map(|j| &steps[j].op), act) else {
                continue;
            };
            steps[i].chain = Some(Chain {
                members,
                inner,
                out: cur,
                fused,
            });
        }

        Ok(OnnxNetwork {
            steps,
            constants: self.constants,
            input_slot,
            output_slot,
            input_shape,
            output_shape,
            names,
            site_slot,
            sites,
            aliases,
            producer,
            last_use,
            dtype: self.dtype,
            device: self.device.clone(),
            opset: self.opset,
            producer_name: model.producer_name.clone(),
        })
    }

    /// The value of a `Constant` node.
    fn constant(&self, node: &NodeProto) -> Result<Value> {
        let [a] = node.attribute.as_slice() else {
            return Err(self.unsupported(node, "a Constant needs exactly one attribute"));
        };
        let bad = |m: &str| self.unsupported(node, m.to_string());
        Ok(match (a.name.as_str(), a.r#type) {
            ("value", _) => {
                let t = a.t.as_ref().ok_or_else(|| bad("the value attribute holds no tensor"))?;
                load::tensor_value(t, None, self.dtype, self.device).map_err(|m| bad(&m))?
            }
            ("value_float", _) => Value::Float(Tensor::new(a.f, self.device)?.to_dtype(self.dtype)?),
            ("value_floats", _) => Value::Float(Tensor::new(a.floats.as_slice(), self.device)?.to_dtype(self.dtype)?),
            ("value_int", _) => Value::Int(Ints::scalar(a.i)),
            ("value_ints", t) if t == attribute_type::INTS || t == 0 => Value::Int(Ints::vector(a.ints.clone())),
            (other, _) => return Err(bad(&format!("Constant attribute `{other}` is not supported"))),
        })
    }
}

fn node_name(node: &NodeProto) -> String {
    if node.name.is_empty() {
        node.output.first().cloned().unwrap_or_default()
    } else {
        node.name.clone()
    }
}
