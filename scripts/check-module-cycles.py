#!/usr/bin/env python3
"""Reports circles in the module dependencies of the library's Rust sources (src/lib.rs and its
module tree; src/main.rs and src/bin/ are not part of it). Python 3 standard library only.

Usage:
    python3 scripts/check-module-cycles.py [--src DIR]   # DIR defaults to the repository's src/
    python3 scripts/check-module-cycles.py --edges       # also lists every edge first
    python3 scripts/check-module-cycles.py --self-test   # checks the verdicts on fake trees

Exit status 0 with a one-line "no module circles" summary, or 1 with every circle printed: the
chain of modules, and one file:line of evidence for each edge (the first reference in file
order, outside `#[cfg(test)]` modules where there is one, and how many more there are).

How the graph is built
----------------------
1. Modules. From src/lib.rs, every `mod name;` (optionally with `#[path = "..."]`) is followed
   to its file (`name.rs` or `name/mod.rs`, beside a mod.rs/lib.rs or in the folder named after
   a plain file), recursively. Inline `mod name { ... }` blocks (a file's `mod tests`, say) are
   modules of their own inside their file, so that `super::` in them means the file's module.
2. Text. Comments (line, block, doc) and string, raw-string, byte-string and char literals are
   blanked out first (lines are kept, so evidence line numbers stay right).
3. References. Every `use` tree (`use crate::a::{b, c::d}`, `use super::{x, y}`, `use self::..`,
   `pub use ..`, and relative `use child::..`) is expanded to its leaf paths, and every other
   path that starts with `crate::`, `$crate::`, `super::` or `self::` (in expressions, types,
   patterns, ...) is taken as written. `pub(in path)` visibilities are not references. A path
   is resolved from the module it appears in: `crate` is the root, `super` the parent, `self`
   the module itself, then as many segments as name modules of the tree. When the next segment
   is a name that the module reached brings in with a `use` (a re-export such as
   `pub use b::Item` in a mod.rs), the path follows that `use` to the module it imports from:
   `super::Item` from a.rs then depends on b, where Item is defined, not on the mod.rs that
   only forwards it. (Glob imports, `use x::*`, are edges to x but are not followed this way.)
4. Edges. A reference from module S to module T, with P their closest common ancestor:
   - S and T under different children a and b of P: an edge a -> b among P's children. With P
     the crate root this is rule (a), top-level modules: `flow` -> `sampling` when any file
     under src/flow/ references crate::sampling (or `super::super::sampling`, or a re-export
     of it). With P any other module it is rule (b), sibling files of one folder: kernels::a ->
     kernels::b for `use super::b::..` or `super::b::f()` in src/kernels/a.rs (a sibling that
     is itself a folder stands for all the files under it).
   - T an ancestor of S (a child using `super::Item` defined in mod.rs): an edge child -> parent.
     It is real, but it cannot close a circle: see the next rule.
   - S an ancestor of T (a parent referencing its own children or deeper descendants: `mod x;`,
     `pub use x::Item`, `x::f()`, `self::x::..` in its mod.rs): no edge. A module's mod.rs
     declares, re-exports and composes its children; that is what it is for, so it never
     counts as one side of a circle. (This is also why the parent node can have no edge back
     to a child, and child -> parent edges never close a circle.)
   A circle is a cycle among the children of one module P; every elementary cycle is printed
   (at most 200 per module). Code in `#[cfg(test)]` modules counts like any other code. Macros
   used by name through `#[macro_use]` are not paths and make no edges.
"""

import argparse
import os
import re
import sys
import tempfile
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


# --------------------------------------------------------------------------------------------
# Blanking comments and literals


def strip_comments_and_strings(text):
    """`text` with comments and string/char literals replaced by spaces (newlines kept)."""
    out = []
    i, n = 0, len(text)

    def blank(s):
        return "".join("\n" if c == "\n" else " " for c in s)

    while i < n:
        c = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(text[i:j]))
            i = j
            continue
        if c == "/" and nxt == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(text[i:j]))
            i = j
            continue
        prev_ident = i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")
        # Raw strings: r"..", r#".."#, br"..", cr"..".
        m = None if prev_ident else re.match(r'(?:b|c)?r(#*)"', text[i:i + 300])
        if m:
            end = text.find('"' + m.group(1), i + m.end())
            j = n if end < 0 else end + 1 + len(m.group(1))
            out.append(blank(text[i:j]))
            i = j
            continue
        # Strings: "..", b"..", c"..".
        m = re.match(r'"', text[i]) or (None if prev_ident else re.match(r'[bc]"', text[i:i + 2]))
        if m:
            j = i + m.end()
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(blank(text[i:j]))
            i = j
            continue
        # Char literals ('a', '\n', '\'', '\u{..}', b'x'); a lifetime or label ('a) stays.
        if c == "'" or (c == "b" and nxt == "'" and not prev_ident):
            q = i if c == "'" else i + 1
            if q + 1 < n and text[q + 1] == "\\":
                j = q + 3  # past the escaped character, which may be a quote
                while j < n and text[j] != "'":
                    j += 1
                j = min(j + 1, n)
                out.append(blank(text[i:j]))
                i = j
                continue
            if q + 2 < n and text[q + 2] == "'" and text[q + 1] != "\n":
                out.append(blank(text[i:q + 3]))
                i = q + 3
                continue
            # A lifetime: copy the quote (and a `b` before it) as it is.
            out.append(text[i:q + 1])
            i = q + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


# --------------------------------------------------------------------------------------------
# The module tree


class Module:
    """One module: its path (a tuple of names, () for the crate root), file and children."""

    def __init__(self, path, file, parent, dir_for_children):
        self.path = path
        self.file = file
        self.parent = parent
        self.dir = dir_for_children  # where `mod x;` inside it looks for x.rs / x/mod.rs
        self.children = {}
        self.uses = {}  # name -> (leaf path as written, module it was written in)
        self.is_test = parent is not None and parent.is_test  # in a `#[cfg(test)]` module
        self.inline = False  # a `mod name { ... }` block inside its parent's file

    def name(self):
        return "::".join(self.path) if self.path else "crate"


CFG_TEST = re.compile(
    r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]\s*(?:#\s*\[[^\]]*\]\s*)*"
    r"(?:pub(?:\s*\([^)]*\))?\s*)?$"
)
TOKEN = re.compile(r"\$crate|" + IDENT + r"|::|[{};,*]|\S")


def tokens_with_lines(code):
    """(token, line) for every token of blanked code."""
    line_starts = [0] + [m.end() for m in re.finditer("\n", code)]
    result = []
    line = 0
    for m in TOKEN.finditer(code):
        while line + 1 < len(line_starts) and line_starts[line + 1] <= m.start():
            line += 1
        result.append((m.group(0), line + 1, m.start()))
    return result


class Crate:
    """The library's modules and the references found in their files."""

    def __init__(self, src):
        self.src = os.path.abspath(src)
        self.modules = {}
        self.files = []  # (module of the file, path, code)
        self.warnings = []
        lib = os.path.join(self.src, "lib.rs")
        if not os.path.isfile(lib):
            raise SystemExit(f"no lib.rs in {self.src}")
        root = Module((), lib, None, self.src)
        self.modules[()] = root
        self._load(root)

    def rel(self, path):
        return os.path.relpath(path, os.path.dirname(self.src))

    def _load(self, module):
        with open(module.file, encoding="utf-8") as f:
            raw = f.read()
        code = strip_comments_and_strings(raw)
        self.files.append((module, module.file, code))
        path_attrs = {
            m.group(2): m.group(1)
            for m in re.finditer(
                r'#\[\s*path\s*=\s*"([^"]+)"\s*\](?:\s*#\[[^\]]*\])*\s*'
                r"(?:pub(?:\s*\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;",
                raw,
            )
        }
        toks = tokens_with_lines(code)
        # Inline modules: a stack of (module, brace depth at which it closes).
        stack = [(module, 0)]
        depth = 0
        i = 0
        while i < len(toks):
            tok = toks[i][0]
            if tok == "mod" and i + 2 < len(toks) and re.fullmatch(IDENT, toks[i + 1][0]):
                name, after = toks[i + 1][0], toks[i + 2][0]
                current = stack[-1][0]
                if after == ";":
                    self._declare_file_module(current, name, path_attrs.get(name))
                    i += 3
                    continue
                if after == "{":
                    child = Module(current.path + (name,), module.file, current,
                                   os.path.join(current.dir, name))
                    child.is_test = child.is_test or bool(CFG_TEST.search(code[:toks[i][2]]))
                    child.inline = True
                    current.children[name] = child
                    self.modules[child.path] = child
                    depth += 1
                    stack.append((child, depth))
                    i += 3
                    continue
            if tok == "{":
                depth += 1
            elif tok == "}":
                if len(stack) > 1 and stack[-1][1] == depth:
                    stack.pop()
                depth -= 1
            i += 1

    def _declare_file_module(self, parent, name, path_attr):
        if path_attr is not None:
            base = parent.dir if parent.inline else os.path.dirname(parent.file)
            candidates = [os.path.normpath(os.path.join(base, path_attr))]
        else:
            candidates = [os.path.join(parent.dir, name + ".rs"),
                          os.path.join(parent.dir, name, "mod.rs")]
        found = [c for c in candidates if os.path.isfile(c)]
        if not found:
            self.warnings.append(f"warning: no file for module {parent.name()}::{name}")
            return
        file = found[0]
        child_dir = os.path.dirname(file) if os.path.basename(file) == "mod.rs" else \
            os.path.join(os.path.dirname(file), name)
        child = Module(parent.path + (name,), file, parent, child_dir)
        parent.children[name] = child
        self.modules[child.path] = child
        self._load(child)

    # ----------------------------------------------------------------------------------------
    # References

    def references(self):
        """(from module, leaf path segments, file, line, text) for every reference."""
        refs = []
        for file_module, file, code in self.files:
            toks = tokens_with_lines(code)
            scopes = self._scopes(file_module, toks)
            i = 0
            while i < len(toks):
                tok, line, _ = toks[i]
                module = scopes[i]
                if tok == "pub" and i + 1 < len(toks) and toks[i + 1][0] == "(":
                    # A visibility, `pub(in crate::x)` included: skip to its `)`.
                    j = i + 1
                    while j < len(toks) and toks[j][0] != ")":
                        j += 1
                    i = j + 1
                    continue
                if tok == "use" and (i == 0 or toks[i - 1][0] != "::") and \
                        (i + 1 >= len(toks) or toks[i + 1][0] != "<"):  # not `impl T + use<'a>`
                    j = i + 1
                    while j < len(toks) and toks[j][0] != ";":
                        j += 1
                    leaves = parse_use_tree([t for t, _, _ in toks[i + 1:j]])
                    for segments, alias in leaves:
                        if segments and segments[0] == "":
                            continue  # `use ::extern_crate::..`
                        if alias not in (None, "*", "_"):
                            module.uses[alias] = (segments, module)
                        refs.append((module, segments, file, line,
                                     "use " + "::".join(segments)))
                    i = j + 1
                    continue
                if tok in ("crate", "$crate", "super", "self") and i + 1 < len(toks) \
                        and toks[i + 1][0] == "::" and (i == 0 or toks[i - 1][0] != "::"):
                    segments = [tok]
                    j = i + 1
                    while j + 1 < len(toks) and toks[j][0] == "::" and \
                            re.fullmatch(IDENT, toks[j + 1][0]):
                        segments.append(toks[j + 1][0])
                        j += 2
                    refs.append((module, segments, file, line, "::".join(segments)))
                    i = j
                    continue
                i += 1
        return refs

    def _scopes(self, file_module, toks):
        """The module (inline modules included) that each token is in."""
        scopes = []
        stack = [(file_module, 0)]
        depth = 0
        pending = None
        for k, (tok, _, _) in enumerate(toks):
            scopes.append(stack[-1][0])
            if tok == "mod" and k + 2 < len(toks) and toks[k + 2][0] == "{":
                pending = stack[-1][0].children.get(toks[k + 1][0])
            if tok == "{":
                depth += 1
                if pending is not None:
                    stack.append((pending, depth))
                    pending = None
            elif tok == "}":
                if len(stack) > 1 and stack[-1][1] == depth:
                    stack.pop()
                depth -= 1
        return scopes

    def resolve(self, module, segments):
        """The module that `segments`, written in `module`, refers to (None: outside the
        crate, such as std or another crate)."""
        found = self._resolve(module, segments, set())
        return None if found is None else found[0]

    def _resolve(self, module, segments, seen):
        """(module reached, segments left over) for `segments` written in `module`, or None."""
        if not segments:
            return module, []
        first = segments[0]
        if first in ("crate", "$crate"):
            return self._descend(self.modules[()], segments[1:], seen)
        if first in ("super", "self"):
            cur, rest = module, segments
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super":
                    if cur.parent is None:
                        return None
                    cur = cur.parent
                rest = rest[1:]
            return self._descend(cur, rest, seen)
        if first in module.children or first in module.uses:
            return self._descend(module, segments, seen)
        return None

    def _descend(self, cur, rest, seen):
        """Follows `rest` from `cur` through child modules, and through a `use` of `cur`
        (a re-export) to the module it imports from."""
        while rest:
            name = rest[0]
            if name in cur.children:
                cur, rest = cur.children[name], rest[1:]
                continue
            if name in cur.uses and (cur.path, name) not in seen:
                seen.add((cur.path, name))
                target_segments, where = cur.uses[name]
                found = self._resolve(where, target_segments, seen)
                if found is not None:
                    target, left = found
                    if not left:
                        # The `use` names a module (`use super::b;`, `pub use x::{self}`):
                        # go on from it.
                        cur, rest = target, rest[1:]
                        continue
                    return target, left + rest[1:]
            break
        return cur, rest


def parse_use_tree(toks):
    """Leaf paths of a `use` tree as (segments, bound name or None/'*'); `self` in a list
    names the list's own prefix (`use a::b::{self, C}` binds b and C)."""
    pos = 0

    def tree(prefix):
        nonlocal pos
        leaves = []
        segments = list(prefix)
        if pos < len(toks) and toks[pos] == "::" and not segments:
            segments.append("")  # a leading `::`: an extern crate
            pos += 1
        while pos < len(toks):
            t = toks[pos]
            if t == "{":
                pos += 1
                while pos < len(toks) and toks[pos] != "}":
                    leaves.extend(tree(segments))
                    if pos < len(toks) and toks[pos] == ",":
                        pos += 1
                pos += 1
                return leaves
            if t == "*":
                pos += 1
                return [(segments, "*")]
            if re.fullmatch(r"\$crate|" + IDENT, t):
                pos += 1
                if t == "self" and segments and (pos >= len(toks) or toks[pos] in (",", "}", "as")):
                    name = segments[-1]
                    leaf = list(segments)
                else:
                    segments.append(t)
                    name = t
                    leaf = segments
                if pos < len(toks) and toks[pos] == "::":
                    pos += 1
                    continue
                if pos + 1 < len(toks) and toks[pos] == "as":
                    name = toks[pos + 1]
                    pos += 2
                return [(leaf, name)]
            pos += 1  # anything else (attributes inside lists, stray tokens): skip
        return leaves or ([(segments, None)] if segments else [])

    out = []
    while pos < len(toks):
        before = pos
        out.extend(tree([]))
        if pos < len(toks) and toks[pos] == ",":
            pos += 1
        if pos == before:
            pos += 1
    return out


# --------------------------------------------------------------------------------------------
# Edges and circles


def build_graphs(crate):
    """Per parent module, {a: {b: (evidence, count)}} over its children (evidence: the first
    reference in file order, outside test modules where there is one; count: all references)."""
    graphs = defaultdict(lambda: defaultdict(dict))
    refs = crate.references()
    refs.sort(key=lambda r: (r[0].is_test, crate.rel(r[2]), r[3]))
    edges = 0
    for module, segments, file, line, text in refs:
        target = crate.resolve(module, segments)
        if target is None:
            continue
        s, t = module.path, target.path
        common = 0
        while common < min(len(s), len(t)) and s[common] == t[common]:
            common += 1
        if common == len(s) or common == len(t):
            continue  # within one module, to an ancestor, or from an ancestor to a descendant
        parent, a, b = s[:common], s[common], t[common]
        if b not in graphs[parent][a]:
            graphs[parent][a][b] = [(crate.rel(file), line, text), 0]
            edges += 1
        graphs[parent][a][b][1] += 1
    return graphs, edges


def elementary_cycles(graph, limit=200):
    """Every elementary cycle of `graph` ({node: {node: ...}}), each starting at its smallest
    node, in order; at most `limit`."""
    nodes = sorted(set(graph) | {b for a in graph for b in graph[a]})
    cycles = []
    for start in nodes:
        # Cycles whose smallest node is `start`: a depth-first search over larger nodes.
        stack = [(start, iter(sorted(graph.get(start, {}))))]
        path = [start]
        on_path = {start}
        while stack and len(cycles) < limit:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.discard(path.pop())
                continue
            if child == start:
                cycles.append(path + [start])
            elif child > start and child not in on_path:
                path.append(child)
                on_path.add(child)
                stack.append((child, iter(sorted(graph.get(child, {})))))
    return cycles


def check(src, out=sys.stdout, list_edges=False):
    """Prints the verdict for the tree at `src` (every edge first with `list_edges`); returns
    the exit status."""
    crate = Crate(src)
    for warning in crate.warnings:
        print(warning, file=sys.stderr)
    graphs, edges = build_graphs(crate)
    if list_edges:
        for parent in sorted(graphs):
            prefix = "::".join(parent) + "::" if parent else ""
            for a in sorted(graphs[parent]):
                for b in sorted(graphs[parent][a]):
                    (file, line, text), count = graphs[parent][a][b]
                    print(f"edge {prefix}{a} -> {prefix}{b}: {file}:{line}: {text} "
                          f"({count} reference{'s' if count > 1 else ''})", file=out)
    found = 0
    for parent in sorted(graphs):
        graph = graphs[parent]
        for cycle in elementary_cycles(graph):
            found += 1
            prefix = "::".join(parent) + "::" if parent else ""
            where = f"in {'::'.join(parent)}" if parent else "between top-level modules"
            print(f"module circle {where}: " + " -> ".join(prefix + n for n in cycle), file=out)
            for a, b in zip(cycle, cycle[1:]):
                (file, line, text), count = graph[a][b]
                more = f" (+{count - 1} more reference{'s' if count > 2 else ''})" if count > 1 else ""
                print(f"  {prefix}{a} -> {prefix}{b}: {file}:{line}: {text}{more}", file=out)
    if found:
        print(f"{found} module circle(s) found", file=out)
        return 1
    files = len(crate.files)
    print(f"no module circles ({len(crate.modules)} modules in {files} files, "
          f"{edges} edges between sibling modules)", file=out)
    return 0


# --------------------------------------------------------------------------------------------
# Self-test


def self_test():
    """Checks the verdicts on small fake trees, with and without circles."""
    import io

    common = {
        "lib.rs": "pub mod a;\npub mod p;\npub mod q;\n",
        "a/mod.rs": (
            "//! Parent: declares, re-exports and calls its children (no edges).\n"
            "mod x;\nmod y;\npub use y::Bar;\npub use x::X;\n"
            "pub fn helper() -> u32 { x::f() + self::y::g() }\n"
        ),
        "p.rs": "use crate::q::Q;\npub fn f() -> Q { Q }\n",
        "q/mod.rs": "#[derive(Debug)]\npub struct Q;\n",
        "main.rs": "use flowmatch::p;\nfn main() { crate::p::f(); }\n",
    }
    clean = dict(common)
    clean.update({
        # x -> y only; x -> parent (helper, defined in mod.rs) is fine.
        "a/x.rs": (
            "use super::y::Y;\npub struct X;\n"
            "pub fn f() -> u32 { super::helper(); let _y: Y = Y; 1 }\n"
        ),
        "a/y.rs": (
            "// use super::x::X;  a comment is not a reference\n"
            "/* super::x::f() */\n"
            "pub struct Y;\npub struct Bar;\n"
            "pub fn g() -> u32 { let s = \"super::x::f()\"; let c = '{'; let q = '\\''; s.len() as u32 }\n"
            "#[cfg(test)]\nmod tests {\n    use super::*;\n    fn t<'a>(v: &'a str) -> &'a str { v }\n}\n"
        ),
    })
    sibling = dict(clean)
    sibling["a/y.rs"] = clean["a/y.rs"] + "pub fn h() -> u32 { super::x::f() }\n"
    via_reexport = dict(clean)
    # y -> x through the parent's re-export of X (defined in x.rs).
    via_reexport["a/y.rs"] = clean["a/y.rs"] + "pub fn h(_: super::X) {}\n"
    in_tests = dict(clean)
    in_tests["a/y.rs"] = clean["a/y.rs"].replace(
        "    use super::*;\n", "    use super::*;\n    use super::super::x::X;\n")
    top_level = dict(clean)
    top_level["q/mod.rs"] = common["q/mod.rs"] + "mod inner;\n"
    top_level["q/inner.rs"] = "pub fn g() { crate::p::f(); }\n"

    cases = [
        ("clean tree", clean, 0, []),
        ("siblings via super::x::", sibling, 1, ["module circle in a: a::x -> a::y -> a::x"]),
        ("via a re-export in mod.rs", via_reexport, 1, ["a::x -> a::y -> a::x", "super::X"]),
        ("in a test module", in_tests, 1, ["a::x -> a::y -> a::x", "use super::super::x::X"]),
        ("top-level", top_level, 1,
         ["module circle between top-level modules: p -> q -> p", "src/q/inner.rs:1"]),
    ]
    failures = 0
    for name, files, expected, needles in cases:
        with tempfile.TemporaryDirectory() as tmp:
            for path, text in files.items():
                full = os.path.join(tmp, "src", path)
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "w", encoding="utf-8") as f:
                    f.write(text)
            buf = io.StringIO()
            status = check(os.path.join(tmp, "src"), out=buf)
        report = buf.getvalue()
        ok = status == expected and all(n in report for n in needles)
        if expected == 0:
            ok = ok and report.startswith("no module circles")
        print(f"self-test {'ok  ' if ok else 'FAIL'} {name}: exit {status}")
        if not ok:
            failures += 1
            print("  " + report.replace("\n", "\n  "))
    print("self-test passed" if not failures else f"self-test: {failures} case(s) failed")
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    parser.add_argument("--src", default=default_src, help="the crate's src/ folder")
    parser.add_argument("--edges", action="store_true", help="list every edge first")
    parser.add_argument("--self-test", action="store_true", help="check the verdicts on fake trees")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    return check(os.path.normpath(args.src), list_edges=args.edges)


if __name__ == "__main__":
    sys.exit(main())
