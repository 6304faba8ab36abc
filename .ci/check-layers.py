#!/usr/bin/env python3
"""The crate's module graph: no import cycle, and arrows only from the command line and the edge
toward the policy core.

Reads every `src/**/*.rs` of the library (not `main.rs`), drops comments and the `#[cfg(test)]`
module at the end of a file (tests may reach anywhere), and records an edge A -> B for each path
`crate::...` or `super::...` in A that names module B (the longest module prefix of the path).
It fails when
  - the file modules have a cycle (A -> B -> ... -> A), or
  - a module uses a top-level part ranked above its own in LAYERS (an arrow pointing back up).
This is the check `cargo modules dependencies --lib --acyclic` would make, without building
rust-analyzer on every CI run (minutes on 2 cores); it also checks the direction of the arrows,
which cargo-modules does not. Standard library only.
"""
import pathlib
import re
import sys

# Top to bottom: a part may use the parts below it, never one above. Parts on one line share a rank
# and must not use each other.
LAYERS = [
    ["cli"],
    ["gateway"],
    ["edge"],
    ["proxy"],
    ["control"],
    ["audit", "inventory"],
    ["metrics"],
    ["config"],
    ["policy"],
    [""],  # lib.rs: the clock helpers every part may use
]
RANK = {part: i for i, parts in enumerate(LAYERS) for part in parts}

ROOT = pathlib.Path(__file__).resolve().parent.parent / "src"


def module_of(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return "::".join(parts)


def strip(text: str) -> str:
    m = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod tests\b", text, re.M)
    if m:
        text = text[: m.start()]
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def main() -> int:
    files = sorted(p for p in ROOT.rglob("*.rs") if p.name != "main.rs")
    modules = {module_of(p): p for p in files}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        text = strip(path.read_text())
        here = mod.split("::") if mod else []
        for m in re.finditer(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)", text):
            segs = [s for s in m.group(2).split("::") if s]
            if m.group(1) == "crate":
                base = []
            else:
                base = here[:-1]
                while segs and segs[0] == "super":
                    segs = segs[1:]
                    base = base[:-1]
            full = base + segs
            target = None
            for k in range(len(full), -1, -1):
                cand = "::".join(full[:k])
                if cand in modules:
                    target = cand
                    break
            if target is not None and target != mod:
                edges[mod].add(target)
        # Paths relative to this module: `child::Item` (after `mod child;` or `use self::child`).
        prefix = mod + "::" if mod else ""
        children = [m[len(prefix):] for m in modules if m.startswith(prefix) and "::" not in m[len(prefix):] and m != mod]
        for child in children:
            if re.search(r"(?<![:\w])(?:self::)?" + child + r"::", text):
                edges[mod].add(prefix + child)

    errors = []
    for a, bs in sorted(edges.items()):
        pa = a.split("::")[0] if a else ""
        for b in sorted(bs):
            pb = b.split("::")[0] if b else ""
            if pa == pb:
                continue
            if RANK.get(pa) is None or RANK.get(pb) is None:
                errors.append(f"{a} -> {b}: part not in LAYERS of .ci/check-layers.py")
            elif RANK[pb] <= RANK[pa]:
                errors.append(f"{a} -> {b}: arrow points up ({pa or 'lib'} may not use {pb or 'lib'})")

    # Cycles between file modules (Tarjan's strongly connected components).
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    for comp in sccs:
        inner = [f"{a} -> {b}" for a in comp for b in sorted(edges[a]) if b in comp]
        errors.append("import cycle: " + ", ".join(inner))

    if "-v" in sys.argv:
        for a, bs in sorted(edges.items()):
            print(f"{a or 'lib'} -> {', '.join(sorted(b or 'lib' for b in bs))}")
    n_edges = sum(len(b) for b in edges.values())
    if errors:
        print(f"check-layers: {len(errors)} problem(s) in {len(modules)} modules:", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    print(f"check-layers: {len(modules)} modules, {n_edges} edges, no cycle, every arrow points down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
