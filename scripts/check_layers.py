#!/usr/bin/env python3
"""Fails if a library crate's top-level modules depend on each other in a cycle.

A module depends on another when its code (not its comments, not its `#[cfg(test)]` part) names
`crate::other`. Run by .ci/run; prints each crate's modules in an order where each depends only on
those before it, or the modules of each cycle with the edges that close it.

    python3 scripts/check_layers.py [crate_dir ...]   (default: the workspace's library crates)
"""
import os
import re
import sys

CRATES = ["interp-core", "transcoders", "circuits", "interp-report"]


def code_of(text):
    """The text before the first `#[cfg(test)]`, without `//` comments."""
    text = text.split("#[cfg(test)]")[0]
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def module_graph(crate):
    """{top-level module: set of top-level modules it names}."""
    src = os.path.join(crate, "src")
    graph = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)
            top = rel.split(os.sep)[0].removesuffix(".rs")
            if top in ("lib", "main", "bin"):
                continue
            code = code_of(open(os.path.join(root, f), encoding="utf-8").read())
            deps = set(re.findall(r"crate::([a-z_0-9]+)", code))
            for group in re.findall(r"crate::\{([^}]*)\}", code, re.S):
                deps.update(p.strip().split("::")[0] for p in group.split(",") if p.strip())
            graph.setdefault(top, set()).update(deps)
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layers(graph):
    """Modules in an order where each depends only on those before it."""
    done, order = set(), []
    while len(done) < len(graph):
        ready = sorted(m for m in graph if m not in done and graph[m] <= done)
        order.append(ready)
        done.update(ready)
    return order


def main():
    failed = False
    for crate in sys.argv[1:] or CRATES:
        graph = module_graph(crate)
        found = cycles(graph)
        if found:
            failed = True
            for comp in found:
                print(f"{crate}: modules in a cycle: {', '.join(comp)}")
                for m in comp:
                    print(f"  {m} -> {', '.join(sorted(graph[m] & set(comp)))}")
        else:
            print(f"{crate}: " + " < ".join(" ".join(layer) for layer in layers(graph)))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
