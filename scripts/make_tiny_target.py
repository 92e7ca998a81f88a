#!/usr/bin/env python
"""Build the embedded demo target ``examples/tiny-target`` from scratch.

The target is a small but *trained* ``Qwen3ForCausalLM`` chat model that answers questions about the
Python standard library ("What does `textwrap.dedent` do?", "Write the function `quote` from module
`shlex`.").  Everything is derived from the stdlib source shipped with this CPython (PSF licence), so the
build needs no network and no model hub:

1. collect a sorted, filtered list of stdlib ``.py`` files and parse them with ``ast``;
2. turn functions / methods / classes / modules into chat samples (docstring Q&A and source listings);
   a fixed set of modules is held out entirely (prompts, held-out perplexity);
3. train a byte-level BPE tokenizer with ChatML special tokens and a reserved ``<|mask|>`` token;
4. train the model (seeded, fixed number of steps), evaluate held-out perplexity, save bf16 safetensors;
5. write prompt sets ``examples/data/prompts-{train,heldout}.jsonl`` for draft-data regeneration.

Regenerate (about 15-20 min on 2 CPU cores)::

    python scripts/make_tiny_target.py

Bit-exact reproduction needs the same CPython patch release (the corpus), torch version and CPU kind;
other 3.11.x releases give a near-identical corpus (the script prints its hash) and a comparable model.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import random
import shutil
import sys
import sysconfig
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------------------------------------
# Corpus
# ----------------------------------------------------------------------------------------------------------

# Directories that are tests, vendored data, build artefacts or machine-specific: not "library text".
SKIP_DIRS = {
    "test", "tests", "idle_test", "site-packages", "__pycache__", "lib-dynload", "ensurepip",
    "encodings",  # codec tables: huge, repetitive, not useful prose or code
    "pydoc_data",  # one generated 700 kB string literal
    "turtledemo", "__phello__",
}
SKIP_FILE_PREFIXES = ("_sysconfigdata", "__hello__", "this.py", "antigravity.py")

# Top-level modules held out of *all* training (tokenizer and model): held-out prompts and the held-out
# perplexity come from these, so they measure generalisation to unseen library code, not recall.
HELDOUT_MODULES = (
    "calendar", "colorsys", "difflib", "fractions", "graphlib", "heapq",
    "shlex", "statistics", "textwrap", "wave",
)

SYSTEM_PROMPTS = (
    "You are a helpful assistant that knows the Python standard library.",
    "You are an expert Python programmer. Answer concisely.",
)

# Several phrasings per task so the model has to read the request rather than memorise one template.
EXPLAIN_TEMPLATES = (
    "What does `{q}` do?",
    "Explain `{q}`.",
    "Describe the {kind} `{name}` from the `{mod}` module.",
    "What is `{q}` used for?",
    "Write the docstring of `{q}`.",
)
CODE_TEMPLATES = (
    "Write the {kind} `{name}` from module `{mod}`.",
    "Show the source code of `{q}`.",
    "How is `{q}` implemented?",
    "Implement `{q}` as it is in the standard library.",
)
CLASS_TEMPLATES = (
    "What is the class `{q}` for?",
    "Describe the class `{name}` from the `{mod}` module.",
    "Explain `{q}`.",
)
MODULE_TEMPLATES = (
    "What is the `{mod}` module for?",
    "Describe the Python module `{mod}`.",
)

MAX_CODE_LINES = 40  # longer functions are skipped: a 5 M-parameter model cannot reproduce them anyway
MAX_CODE_CHARS = 1600
MAX_DOC_CHARS = 900


@dataclass(frozen=True)
class Item:
    mod: str  # dotted module name, e.g. "email.utils"
    qual: str  # qualified name inside the module, e.g. "Message.get_all"; "" for the module itself
    kind: str  # "function", "method", "class" or "module"
    signature: str  # "dedent(text)" / "class Fraction(numbers.Rational)" / ""
    doc: str  # cleaned docstring ("" if none)
    source: str  # dedented source of the def (functions and methods only)


def stdlib_files(stdlib: Path) -> list[tuple[str, Path]]:
    """Return sorted ``(module name, path)`` pairs of the stdlib files used as corpus."""
    out = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if any(part in SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        if rel.name.startswith(SKIP_FILE_PREFIXES):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def _trim_doc(doc: str) -> str:
    """Keep whole leading paragraphs of a docstring up to ``MAX_DOC_CHARS`` (never cut mid-sentence)."""
    paras = doc.strip().split("\n\n")
    kept = [paras[0]]
    for p in paras[1:]:
        if sum(len(k) + 2 for k in kept) + len(p) > MAX_DOC_CHARS:
            break
        kept.append(p)
    return "\n\n".join(kept)[: 2 * MAX_DOC_CHARS]


def _def_source(lines: list[str], node: ast.AST) -> str:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return textwrap.dedent("\n".join(lines[first - 1 : node.end_lineno])).rstrip()


def _func_signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    sig = f"{node.name}({ast.unparse(node.args)})"
    if node.returns is not None:
        sig += f" -> {ast.unparse(node.returns)}"
    return sig


def extract_items(mod: str, source: str) -> list[Item]:
    """Module, top-level functions and classes, and methods one level down, in source order."""
    tree = ast.parse(source)
    lines = source.splitlines()
    items = [Item(mod, "", "module", "", _trim_doc(ast.get_docstring(tree) or ""), "")]

    def add_func(node, prefix: str, kind: str) -> None:
        items.append(Item(mod, prefix + node.name, kind, _func_signature(node),
                          _trim_doc(ast.get_docstring(node) or ""), _def_source(lines, node)))

    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            add_func(node, "", "function")
        elif isinstance(node, ast.ClassDef):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            items.append(Item(mod, node.name, "class", f"class {node.name}" + (f"({bases})" if bases else ""),
                              _trim_doc(ast.get_docstring(node) or ""), ""))
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    add_func(sub, node.name + ".", "method")
    return items


def collect_items(stdlib: Path) -> list[Item]:
    items = []
    for mod, path in stdlib_files(stdlib):
        try:
            source = path.read_text(encoding="utf-8")
            items.extend(extract_items(mod, source))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few files are templates or Python-2 fixtures; they are simply not corpus
    return items


def is_heldout(mod: str) -> bool:
    return mod.split(".")[0] in HELDOUT_MODULES


def _methods_line(item: Item, items_by_class: dict[tuple[str, str], list[str]]) -> str:
    names = [m for m in items_by_class.get((item.mod, item.qual), []) if not m.startswith("_")]
    return ("\n\nMethods: " + ", ".join(f"`{m}`" for m in names[:12]) + ".") if names else ""


def build_samples(items: list[Item], rng: random.Random) -> list[dict]:
    """Turn items into chat samples ``{"mod", "task", "messages"}``; one sample per (item, task).

    Each sample draws its prompt template and whether it has a system prompt from ``rng`` so the result
    depends only on the seed and the (sorted) item list.
    """
    methods: dict[tuple[str, str], list[str]] = {}
    for it in items:
        if it.kind == "method":
            cls, meth = it.qual.split(".", 1)
            methods.setdefault((it.mod, cls), []).append(meth)

    samples = []
    for it in items:
        q = f"{it.mod}.{it.qual}" if it.qual else it.mod
        # methods are named with their class ("Fraction.limit_denominator") so the request is unambiguous
        fields = dict(q=q, mod=it.mod, name=it.qual or it.mod, kind=it.kind)
        tasks = []  # (task name, user prompt, assistant answer)
        if it.kind in ("function", "method"):
            if it.doc:
                cls = it.qual.rpartition(".")[0]
                answer = f"`{it.mod}.{cls + '.' if cls else ''}{it.signature}`\n\n{it.doc}"
                tasks.append(("explain", rng.choice(EXPLAIN_TEMPLATES), answer))
            n_lines = it.source.count("\n") + 1
            if n_lines <= MAX_CODE_LINES and len(it.source) <= MAX_CODE_CHARS:
                tasks.append(("code", rng.choice(CODE_TEMPLATES), f"```python\n{it.source}\n```"))
        elif it.kind == "class" and it.doc:
            answer = f"`{it.signature}` in `{it.mod}`\n\n{it.doc}{_methods_line(it, methods)}"
            tasks.append(("class", rng.choice(CLASS_TEMPLATES), answer))
        elif it.kind == "module" and it.doc:
            tasks.append(("module", rng.choice(MODULE_TEMPLATES), it.doc))
        for task, template, answer in tasks:
            messages = []
            if rng.random() < 0.5:
                messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
            messages.append({"role": "user", "content": template.format(**fields)})
            messages.append({"role": "assistant", "content": answer})
            samples.append({"mod": it.mod, "task": task, "messages": messages})
    return samples
