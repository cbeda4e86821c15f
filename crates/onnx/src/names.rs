//! Site names from the PyTorch module paths that `torch.onnx.export` records.

use std::collections::{HashMap, HashSet};

use crate::proto::NodeProto;

/// The module paths enclosing `node`, outermost first, as the exporter recorded them (before
/// call numbering), or `None` when the file records none.
///
/// - The dynamo exporter writes `pkg.torch.onnx.name_scopes`, e.g. `['', 'layer1', 'layer1.0',
///   'layer1.0.relu', 'relu_2']`: the root, the modules' full paths, and the operator's own name.
/// - The TorchScript exporter names nodes `/layer1/layer1.0/relu_1/Relu`: each component is a
///   module's name relative to its parent, except that the children of containers repeat the
///   container's name (`seq.1` under `seq`, `seq.1.0` under `seq.1`); a second call of a module
///   gets `_1`, a third `_2`.
pub(crate) fn module_paths(node: &NodeProto, seen: &mut HashSet<String>) -> Option<Vec<String>> {
    if let Some(p) = node
        .metadata_props
        .iter()
        .find(|p| p.key == "pkg.torch.onnx.name_scopes")
    {
        let items = parse_list(&p.value)?;
        if items.len() < 2 {
            return Some(Vec::new());
        }
        let paths: Vec<String> = items[1..items.len() - 1].to_vec();
        return Some(paths);
    }
    let name = node.name.strip_prefix('/')?;
    let mut parts: Vec<&str> = name.split('/').collect();
    parts.pop();
    let mut out: Vec<String> = Vec::new();
    let mut base = String::new();
    let mut prev = String::new();
    for comp in parts {
        if comp.is_empty() {
            return None;
        }
        let comp = if !prev.is_empty() && comp.starts_with(&format!("{prev}.")) {
            comp.to_string()
        } else {
            base = out.last().map(|p| format!("{p}.")).unwrap_or_default();
            comp.to_string()
        };
        // `relu_1` is the second call of `relu` when `relu` was seen in the same parent.
        let mut full = format!("{base}{comp}");
        if let Some((stem, k)) = comp.rsplit_once('_') {
            if k.parse::<usize>().is_ok() && seen.contains(&format!("{base}{stem}")) {
                full = format!("{base}{stem}");
            }
        }
        seen.insert(full.clone());
        prev = comp;
        out.push(full);
    }
    Some(out)
}

/// Parses Python's repr of a list of strings: `['', 'a', "b'c"]`.
fn parse_list(s: &str) -> Option<Vec<String>> {
    let s = s.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let Some(q) = chars.next() else { break };
        if q != '\'' && q != '"' {
            return None;
        }
        let mut item = String::new();
        loop {
            match chars.next()? {
                '\\' => item.push(chars.next()?),
                c if c == q => break,
                c => item.push(c),
            }
        }
        out.push(item);
    }
    Some(out)
}

/// Numbers the calls of each module: a module whose nodes come back after nodes of other
/// modules is called again, and its second call is `path#2`. `paths[i]` are the module paths
/// of step `i`, outermost first; returns them with call numbers.
pub(crate) fn number_calls(paths: &[Vec<String>]) -> Vec<Vec<String>> {
    let mut calls: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<Vec<String>> = Vec::with_capacity(paths.len());
    let empty: Vec<String> = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let prev_raw = if i > 0 { &paths[i - 1] } else { &empty };
        let mut resolved: Vec<String> = Vec::with_capacity(p.len());
        let mut same = true;
        for (d, m) in p.iter().enumerate() {
            if same && prev_raw.get(d) == Some(m) {
                resolved.push(out[i - 1][d].clone());
                continue;
            }
            same = false;
            let n = calls.entry(m.as_str()).or_insert(0);
            *n += 1;
            resolved.push(if *n == 1 { m.clone() } else { format!("{m}#{n}") });
        }
        out.push(resolved);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::StringStringEntryProto;

    fn node(name: &str) -> NodeProto {
        NodeProto {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn torchscript_paths() {
        let mut seen = HashSet::new();
        let p = |n: &str, seen: &mut HashSet<String>| module_paths(&node(n), seen).unwrap();
        assert_eq!(
            p("/blocks/blocks.0/conv/Conv", &mut seen),
            ["blocks", "blocks.0", "blocks.0.conv"]
        );
        assert_eq!(
            p("/blocks/blocks.0/seq/seq.1/seq.1.0/Relu", &mut seen),
            [
                "blocks",
                "blocks.0",
                "blocks.0.seq",
                "blocks.0.seq.1",
                "blocks.0.seq.1.0"
            ]
        );
        assert_eq!(
            p("/blocks/blocks.0/act/Relu", &mut seen),
            ["blocks", "blocks.0", "blocks.0.act"]
        );
        assert_eq!(
            p("/blocks/blocks.0/act_1/Relu", &mut seen),
            ["blocks", "blocks.0", "blocks.0.act"]
        );
        assert_eq!(p("/Flatten", &mut seen), Vec::<String>::new());
        assert!(module_paths(&node("Identity_3"), &mut seen).is_none());
    }

    #[test]
    fn dynamo_paths() {
        let mut n = node("node_relu_2");
        n.metadata_props.push(StringStringEntryProto {
            key: "pkg.torch.onnx.name_scopes".into(),
            value: "['', 'blocks', 'blocks.0', 'blocks.0.act', 'relu_2']".into(),
        });
        assert_eq!(
            module_paths(&n, &mut HashSet::new()).unwrap(),
            ["blocks", "blocks.0", "blocks.0.act"]
        );
    }

    #[test]
    fn calls_are_numbered() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let paths = vec![
            s(&["b", "b.act"]),
            s(&["b", "b.conv"]),
            s(&["b", "b.act"]),
            s(&["b", "b.act"]),
            s(&["c"]),
            s(&["b", "b.act"]),
        ];
        let n = number_calls(&paths);
        assert_eq!(n[0], s(&["b", "b.act"]));
        assert_eq!(n[2], s(&["b", "b.act#2"]));
        assert_eq!(n[3], s(&["b", "b.act#2"]));
        assert_eq!(n[5], s(&["b#2", "b.act#3"]));
    }
}
