#!/usr/bin/env python3
"""Fills in the output of `$ extremal …` commands in the `console` blocks of docs/*.md (and
the README) whose output is still empty, by running them from the repository root with the
built binary (the newer of target/release/extremal and target/debug/extremal). Outputs already written
are left alone: `cargo test -p extremal-cli --test docs` checks them. Replace run-dependent
parts (seconds) with `[..]` by hand.

    cargo build -p extremal-cli && python3 scripts/docs_bless.py docs/03-channels.md
"""
import os
import shlex
import subprocess
import sys

BIN = max((p for p in ("target/release/extremal", "target/debug/extremal") if os.path.exists(p)),
          key=os.path.getmtime)  # the newer build


def bless(path):
    lines = open(path).read().split("\n")
    out, i, in_block = [], 0, False
    while i < len(lines):
        line = lines[i]
        out.append(line)
        if not in_block:
            in_block = line.strip() in ("```console", "```console long")
            i += 1
            continue
        if line.strip() == "```":
            in_block = False
            i += 1
            continue
        if line.startswith("$ extremal"):
            cmd = line[2:]
            while cmd.endswith("\\"):
                i += 1
                out.append(lines[i])
                cmd = cmd[:-1] + " " + lines[i]
            nxt = lines[i + 1] if i + 1 < len(lines) else "```"
            if nxt.startswith("$ ") or nxt.strip() == "```":
                args = shlex.split(cmd)[1:]
                p = subprocess.run([BIN] + args, capture_output=True, text=True)
                text = p.stdout if p.returncode == 0 else p.stderr
                out.extend(l.rstrip() for l in text.rstrip("\n").split("\n") if text)
                print(f"{path}: ran {cmd[:70]}", file=sys.stderr)
        i += 1
    open(path, "w").write("\n".join(out))


for f in sys.argv[1:]:
    bless(f)
