#!/usr/bin/env python3
"""Checks that the code's layout shows the design: no import loop between the files of a crate,
and no source file longer than MAX_LINES (generated code excepted). `--print` shows each crate's
file-level `use` graph.

An edge A -> B means a file names an item through B's module path (`use crate::b::...`,
`super::b::...`, or an inline `crate::b::x`). Module declarations (`mod b;`) are not edges;
a `pub use` that re-exports a child is. Test modules at the end of a file are skipped.

Usage: scripts/layout.py [--print] [crate-dir ...]   (default: every workspace crate)
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 600
# Generated sources kept in the tree, if any (protobuf code is generated at build time).
GENERATED: tuple = ()
CRATES = ["core", "cni", "ebpf", "node-proxy", "controller", "waypoint", "testbed", "e2e", "cli"]


def module_files(src):
    """Module path (tuple) -> file, for every .rs under src."""
    files = {}
    for dirpath, _, names in os.walk(src):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[0] == "bin":
                continue
            # With a library, `crate::` means lib.rs; main.rs is a crate of its own.
            if rel == ["main"] and os.path.exists(os.path.join(src, "lib.rs")):
                continue
            if rel[-1] in ("lib", "main") and len(rel) == 1:
                rel = []
            elif rel[-1] == "mod":
                rel = rel[:-1]
            files[tuple(rel)] = path
    return files


def code_of(path):
    text = open(path, encoding="utf-8").read()
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*(pub(\(crate\))? )?mod \w+", text, re.M)
    if cut:
        text = text[: cut.start()]
    # Drop comments and string literals.
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    return text


def expand_use(stmt):
    """`a::{b, c::{d}}` -> ['a::b', 'a::c::d']."""
    stmt = stmt.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", stmt, re.S)
    if not m:
        return [stmt]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        p = p.strip()
        if p:
            out += expand_use(prefix + p)
    return out


def resolve(path_parts, here, files):
    """The file a path (relative to module `here`) lands in, or None."""
    if not path_parts:
        return None
    if path_parts[0] == "crate":
        base, rest = (), path_parts[1:]
    elif path_parts[0] in ("super", "self"):
        base = list(here)
        rest = list(path_parts)
        while rest and rest[0] in ("super", "self"):
            if rest[0] == "super":
                base = base[:-1]
            rest = rest[1:]
        base = tuple(base)
    else:
        # A path starting with a child module of `here` (as in `pub use child::X`).
        if tuple(here) + (path_parts[0],) in files:
            base, rest = tuple(here), path_parts
        else:
            return None
    best = files.get(base)
    for i in range(len(rest)):
        candidate = base + tuple(rest[: i + 1])
        if candidate in files:
            best = files[candidate]
        else:
            break
    return best


def graph(crate):
    src = os.path.join(ROOT, crate, "src")
    if not os.path.isdir(src):
        return None
    files = module_files(src)
    by_file = {v: k for k, v in files.items()}
    edges = {}
    for path, here in by_file.items():
        code = code_of(path)
        targets = set()
        for m in re.finditer(r"\buse\s+([^;]+);", code):
            for p in expand_use(m.group(1)):
                p = p.split(" as ")[0].strip()
                t = resolve([x for x in p.split("::") if x], here, files)
                if t:
                    targets.add(t)
        for m in re.finditer(r"\b((?:crate|super)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", code):
            t = resolve(m.group(1).split("::"), here, files)
            if t:
                targets.add(t)
        # Inline paths through a child module (`child::f()`), not preceded by another segment.
        for m in re.finditer(r"(?<![:\w])([a-z_][a-z0-9_]*)::[A-Za-z_]", code):
            child = tuple(here) + (m.group(1),)
            if child in files:
                targets.add(files[child])
        targets.discard(path)
        edges[path] = targets
    return edges


def cycles(edges):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            strong(v)
    return out


def long_files(crate):
    out = []
    for dirpath, _, names in os.walk(os.path.join(ROOT, crate)):
        for name in names:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, ROOT)
            if not name.endswith(".rs") or rel in GENERATED:
                continue
            with open(path, encoding="utf-8") as f:
                n = sum(1 for _ in f)
            if n > MAX_LINES:
                out.append((rel, n))
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show = "--print" in sys.argv
    failed = False
    for crate in args or CRATES:
        for rel, n in long_files(crate):
            failed = True
            print(f"{rel}: {n} lines (more than {MAX_LINES}): split it by concern")
    for crate in args or CRATES:
        edges = graph(crate)
        if edges is None:
            continue
        rel = lambda p: os.path.relpath(p, ROOT)
        if show:
            print(f"# {crate}")
            for f in sorted(edges):
                deps = sorted(rel(t) for t in edges[f])
                print(f"  {rel(f)} -> {', '.join(deps) if deps else '(nothing)'}")
        for comp in cycles(edges):
            failed = True
            print(f"import loop in {crate}: {' <-> '.join(sorted(rel(c) for c in comp))}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
