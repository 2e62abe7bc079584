#!/usr/bin/python3
"""The shape of the tree, measured: long functions, long files, and cycles
in the include graph between folders.

    tools/shape.py [--fn-max 70] [--file-max 800] [--check functions,files,cycles]

Functions come from Universal Ctags (line and end of each C function;
tools/bootstrap.sh installs it).  Folders are ring/, queue/, filters/,
src/ and each folder below src/ (src/smtp, src/deliver, ...); an edge
A -> B means a file in A includes a header of B.  A cycle is a strongly
connected set of two or more folders.

Prints the report; with --check, exits 1 if one of the named measures is
over its limit (tests are not measured: only the program's own folders).
tests/run.sh checks functions; files and cycles are reported only until the
connection layer is built (doc/design-net.md)."""

import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = ("ring", "queue", "filters", "src", "tools")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def sources():
    for top in TOP:
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            for f in sorted(files):
                if f.endswith((".c", ".h")):
                    yield os.path.relpath(os.path.join(d, f), ROOT)


def folder(path):
    parts = path.split("/")
    if parts[0] == "src" and len(parts) > 2:
        return "src/" + parts[1]
    return parts[0]


def functions(paths):
    """(lines, name, path:line) of every function definition."""
    out = subprocess.run(["ctags", "--c-kinds=f", "--fields=+ne", "-o", "-"] + list(paths),
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    res = []
    for line in out.splitlines():
        cols = line.split("\t")
        fields = dict(c.split(":", 1) for c in cols[3:] if ":" in c)
        if "line" in fields and "end" in fields:
            n = int(fields["end"]) - int(fields["line"]) + 1
            res.append((n, cols[0], "%s:%s" % (cols[1], fields["line"])))
    return sorted(res, reverse=True)


def resolve(src, inc):
    """The folder of an included header, or None for a system header."""
    for cand in (os.path.join(os.path.dirname(src), inc), inc, os.path.join("src", inc)):
        if os.path.exists(os.path.join(ROOT, cand)):
            return folder(os.path.normpath(cand))
    return None


def cycles(edges):
    """Strongly connected components of two or more folders (Tarjan)."""
    index, low, stack, on, res = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
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
                res.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fn-max", type=int, default=70)
    ap.add_argument("--file-max", type=int, default=800)
    ap.add_argument("--check", default="",
                    help="comma-separated: functions, files, cycles")
    a = ap.parse_args()
    gate = set(filter(None, a.check.split(",")))
    unknown = gate - {"functions", "files", "cycles"}
    if unknown:
        ap.error("unknown measure: %s" % ", ".join(sorted(unknown)))
    paths = list(sources())
    bad = False

    long_fn = [f for f in functions([p for p in paths if p.endswith(".c")]) if f[0] > a.fn_max]
    print("functions over %d lines: %d" % (a.fn_max, len(long_fn)))
    for n, name, where in long_fn:
        print("  %5d  %s  %s" % (n, name, where))
    bad |= "functions" in gate and bool(long_fn)

    sizes = []
    for p in paths:
        with open(os.path.join(ROOT, p), encoding="utf-8", errors="replace") as f:
            sizes.append((sum(1 for _ in f), p))
    long_files = sorted((s for s in sizes if s[0] > a.file_max), reverse=True)
    print("files over %d lines: %d" % (a.file_max, len(long_files)))
    for n, p in long_files:
        print("  %5d  %s" % (n, p))
    bad |= "files" in gate and bool(long_files)

    edges = {}
    for p in paths:
        with open(os.path.join(ROOT, p), encoding="utf-8", errors="replace") as f:
            text = f.read()
        for inc in INCLUDE.findall(text):
            to = resolve(p, inc)
            if to is not None and to != folder(p):
                edges.setdefault(folder(p), set()).add(to)
    print("folder includes:")
    for v in sorted(edges):
        print("  %-14s -> %s" % (v, " ".join(sorted(edges[v]))))
    cyc = cycles(edges)
    print("folder cycles: %d" % len(cyc))
    for c in cyc:
        print("  " + " <-> ".join(c))
    bad |= "cycles" in gate and bool(cyc)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
