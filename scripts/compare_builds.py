#!/usr/bin/env python3
"""Two builds of `extremal` side by side: the same outputs, and how their times compare.

For a refactor that must change no result and cost no speed (issue 17): each command runs
with both binaries, alternating (A B A B …, so that the machine's noise falls on both), and
its stdout (JSON, with the timing fields removed) and its --out files must be byte-identical.
Prints per command the median wall time of each build and their ratio (new / old).

    git worktree add /tmp/before <old-commit>
    (cd /tmp/before && CARGO_TARGET_DIR=/tmp/before-target cargo build --release -p extremal-cli)
    cargo build --release -p extremal-cli
    python3 scripts/compare_builds.py /tmp/before-target/release/extremal target/release/extremal
"""

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, arguments, compare --out files)
COMMANDS = [
    ("bench resnet50", ["bench", "--model", "resnet50", "--passes", "3", "--json"], False),
    (
        "attribute 50 iterations",
        ["attribute", "assets/chelsea.png", "--areas", "0.05,0.1,0.2", "--iterations", "50", "--json"],
        True,
    ),
    (
        "channels layer3 keep 10",
        ["channels", "assets/chelsea.png", "--layer", "layer3", "--keep", "10", "--json"],
        True,
    ),
    (
        "channels layer3 keep 25 (coffee)",
        ["channels", "assets/coffee.png", "--layer", "layer3", "--keep", "25", "--json"],
        False,
    ),
    (
        "channels layer4 sweep",
        ["channels", "assets/chelsea.png", "--layer", "layer4", "--sweep", "5,10,25,50", "--json"],
        True,
    ),
    ("classify", ["classify", "assets/coffee.png", "--json"], False),
]

# Fields that measure time, not results.
TIMING = {"seconds", "forward_s", "forward_backward_s", "seconds_per_iteration"}


def strip_timing(v):
    if isinstance(v, dict):
        return {k: strip_timing(x) for k, x in v.items() if k not in TIMING}
    if isinstance(v, list):
        return [strip_timing(x) for x in v]
    return v


def digest(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()[:16]
    return out


def run(binary, args, out):
    cmd = [binary] + args + (["--out", out] if out else [])
    start = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {p.stderr.strip()}")
    return seconds, strip_timing(json.loads(p.stdout))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each command per build")
    a = ap.parse_args()
    old, new = os.path.abspath(a.old), os.path.abspath(a.new)
    print(f"{'command':<34} {'old s':>8} {'new s':>8} {'new/old':>8}  same output")
    ok = True
    for name, args, files in COMMANDS:
        times = {old: [], new: []}
        results = {}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(a.repeats):
                for b in (old, new) if r % 2 == 0 else (new, old):
                    out = os.path.join(tmp, f"{'old' if b == old else 'new'}-{r}") if files else None
                    s, v = run(b, args, out)
                    times[b].append(s)
                    key = "old" if b == old else "new"
                    results.setdefault(key, (v, digest(out) if out else None))
            same = results["old"] == results["new"]
            if not same:
                ok = False
                for key in ("old", "new"):
                    print(f"  {key}: {json.dumps(results[key][0])[:400]} {results[key][1]}")
        t_old, t_new = statistics.median(times[old]), statistics.median(times[new])
        print(f"{name:<34} {t_old:>8.2f} {t_new:>8.2f} {t_new / t_old:>8.3f}  {'yes' if same else 'NO'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
