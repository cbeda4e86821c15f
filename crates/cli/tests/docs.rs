//! Every `console` block of the tutorials (`docs/*.md`) and of the README runs here: each
//! `$ extremal …` line is run (in a scratch directory that sees the repository's `assets/` and
//! `tests/`) and its output compared with the lines
//! that follow it. In the expected output, a line `...` stands for any number of lines and
//! `[..]` for any text within a line. A command that fails is compared on its stderr.
//!
//! In `docs/`, a `console` block may hold only `extremal` commands; the README's other
//! commands (`cargo …`) are shown, not run. Blocks marked `console long` (minutes each: the
//! 800-iteration runs) are checked by the ignored test
//! `cargo test --release -p extremal-cli --test docs -- --ignored`, outside CI.

mod common;

use std::path::Path;

use common::*;

/// One command of a `console` block and the output written under it.
struct Case {
    file: String,
    line: usize,
    args: Vec<String>,
    expected: Vec<String>,
}

/// Splits a command line as a POSIX shell would for plain words and '…' / "…" quotes.
fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

fn cases(path: &Path, only_extremal: bool, long: bool) -> Vec<Case> {
    let text = std::fs::read_to_string(path).unwrap();
    let file = path.strip_prefix(root()).unwrap_or(path).display().to_string();
    let mut cases: Vec<Case> = Vec::new();
    let (mut in_block, mut pending) = (false, String::new());
    let mut skipping = false;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if !in_block {
            in_block = trimmed == if long { "```console long" } else { "```console" };
            continue;
        }
        if trimmed == "```" {
            in_block = false;
            continue;
        }
        if let Some(cmd) = trimmed
            .strip_prefix("$ ")
            .or(if pending.is_empty() { None } else { Some(trimmed) })
        {
            let (cmd, more) = match cmd.strip_suffix('\\') {
                Some(c) => (c, true),
                None => (cmd, false),
            };
            pending.push_str(cmd);
            pending.push(' ');
            if more {
                continue;
            }
            let args = words(&pending);
            pending.clear();
            skipping = args.first().map(String::as_str) != Some("extremal");
            if skipping {
                assert!(
                    !only_extremal,
                    "{file}:{}: a console block in docs/ runs only `extremal`",
                    n + 1
                );
                continue;
            }
            cases.push(Case {
                file: file.clone(),
                line: n + 1,
                args: args[1..].to_vec(),
                expected: Vec::new(),
            });
        } else if !skipping {
            if let Some(case) = cases.last_mut() {
                case.expected.push(trimmed.to_string());
            }
        }
    }
    cases
}

/// Whether `actual` matches `pattern`, where `[..]` matches any text.
fn line_matches(pattern: &str, actual: &str) -> bool {
    let parts: Vec<&str> = pattern.split("[..]").collect();
    if parts.len() == 1 {
        return pattern == actual;
    }
    let mut rest = match actual.strip_prefix(parts[0]) {
        Some(r) => r,
        None => return false,
    };
    for (i, part) in parts.iter().enumerate().skip(1) {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether the lines match, `...` matching any run of lines.
fn matches(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e == "..." => (0..=actual.len()).any(|k| matches(rest, &actual[k..])),
        Some((e, rest)) => actual
            .split_first()
            .is_some_and(|(a, tail)| line_matches(e, a) && matches(rest, tail)),
    }
}

#[test]
fn tutorial_and_readme_commands_print_what_they_show() {
    check(false);
}

#[test]
#[ignore = "minutes: the 800-iteration runs of the tutorials"]
fn long_tutorial_commands_print_what_they_show() {
    check(true);
}

/// A scratch directory that sees the repository's `assets/` and `tests/` (the inputs the
/// documents name) and receives the documents' `out/`: running the tests never touches a
/// user's own `out/`.
fn workdir(long: bool) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "extremal-docs-{}-{}",
        std::process::id(),
        if long { "long" } else { "short" }
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["assets", "tests"] {
        std::os::unix::fs::symlink(root().join(name), dir.join(name)).unwrap();
    }
    dir
}

fn check(long: bool) {
    let dir = workdir(long);
    let mut files: Vec<(std::path::PathBuf, bool)> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| (p, true))
        .collect();
    files.sort();
    files.push((root().join("README.md"), false));
    let (mut checked, mut failures) = (0, Vec::new());
    for (path, only_extremal) in &files {
        for case in cases(path, *only_extremal, long) {
            let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_extremal"))
                .args(&args)
                .current_dir(&dir)
                .output()
                .unwrap();
            let text = if out.status.success() {
                String::from_utf8_lossy(&out.stdout).to_string()
            } else {
                String::from_utf8_lossy(&out.stderr).to_string()
            };
            let actual: Vec<&str> = text.lines().map(str::trim_end).collect();
            let mut expected = case.expected.clone();
            while expected.last().is_some_and(|l| l.is_empty()) {
                expected.pop();
            }
            if !matches(&expected, &actual) {
                failures.push(format!(
                    "{}:{}: `extremal {}` printed\n{}\nbut the document shows\n{}",
                    case.file,
                    case.line,
                    case.args.join(" "),
                    text,
                    expected.join("\n")
                ));
            }
            checked += 1;
        }
    }
    // Every mismatch at once, so that one run shows all the pages to update.
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let kind = if long { "long " } else { "" };
    println!("{checked} {kind}shell commands of docs/ and the README print what the documents show");
    assert!(checked > 0);
}

#[test]
fn the_matcher_understands_its_wildcards() {
    let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(matches(&e(&["a [..] c", "..."]), &["a b c", "x", "y"]));
    assert!(matches(&e(&["...", "z"]), &["x", "z"]));
    assert!(!matches(&e(&["a"]), &["a", "b"]));
    assert!(!line_matches("p[..]q", "pxr"));
    assert_eq!(words("extremal a 'b c' \"d\""), vec!["extremal", "a", "b c", "d"]);
}
