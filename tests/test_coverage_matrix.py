"""The coverage matrix: every registered (first-party method, tiny family) pair captures, trains and is lossless
on a tiny target of that family built from config (draftsmith.coverage.probe) — and a family no method
registers (DeepSeek-V4) really fails, so registrations follow the matrix both ways. docs/coverage.md is the
table benchmarks/coverage_probe.py writes from the same probe; it must list what is registered. Each registered
row also exports: every format passes check-export and reads back drafting the same rounds, or is refused by its
writer with a reason, and at least one engine format serves it."""

from __future__ import annotations

import pytest

import draftsmith
from draftsmith.coverage import probe, tiny_family_target
from draftsmith.testing import known_tiny_architectures

from support import REPO
from support.coverage import DRAFT_OPTIONS, METHODS, OBJECTIVE_OPTIONS

_TARGETS: dict = {}


def target(arch: str):
    if arch not in _TARGETS:
        _TARGETS[arch] = tiny_family_target(arch)[0]
    return _TARGETS[arch]


def _registered() -> list[tuple[str, str]]:
    registry = draftsmith.get_registry()
    pairs = [(m, a) for m in METHODS for a in known_tiny_architectures() if a in registry.architectures(m)]
    draftsmith.reset_plugins()
    return pairs


REGISTERED = _registered()


@pytest.mark.parametrize("method,arch", REGISTERED, ids=[f"{m}-{a}" for m, a in REGISTERED])
def test_every_registered_pair_trains_and_is_lossless(method, arch):
    row = probe(method, arch, target(arch), draft_options=DRAFT_OPTIONS[method],
                objective_options=OBJECTIVE_OPTIONS[method])
    assert row["registered"] is True
    assert row["status"] == "ok", row
    assert row["tau"] > 1.0
    # every format the method writes passes check-export and reads back drafting the same rounds, or its
    # writer refuses the family for a reason it names (a client that would run the draft differently)
    exports = row["exports"]
    assert exports.get("native") == "ok", exports
    assert all(v == "ok" or v.startswith("refused: ") for v in exports.values()), exports
    engine_formats = [f for f in exports if f != "native"]  # EAGLE-1 writes none (engines refuse its layout)
    assert not engine_formats or any(exports[f] == "ok" for f in engine_formats), f"no engine serves it: {exports}"


def test_the_matrix_covers_twenty_families_for_every_method():
    for method in METHODS:
        assert sum(1 for m, _a in REGISTERED if m == method) >= 20, method


@pytest.mark.parametrize("method", METHODS)
def test_an_unregistered_family_fails_its_row(method):
    """DeepSeek-V4's decoder layers return several residual streams (hyper-connections): a Llama-shaped draft
    cannot read them, so no method registers the family — and its row indeed fails."""
    assert "DeepseekV4ForCausalLM" not in draftsmith.get_registry().architectures(method)
    row = probe(method, "DeepseekV4ForCausalLM", target("DeepseekV4ForCausalLM"),
                draft_options=DRAFT_OPTIONS[method], objective_options=OBJECTIVE_OPTIONS[method])
    assert row["registered"] is False and row["status"] != "ok"


def test_resolve_says_why_a_family_is_not_served(cli_env):
    from support.cli import run_cli

    res = run_cli(["resolve", "--method", "eagle3", "--architecture", "DeepseekV4ForCausalLM"], env=cli_env)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "DeepseekV4ForCausalLM is not served: DeepSeek-V4's decoder layers carry several residual streams" \
        in res.stderr


def test_docs_coverage_lists_every_registered_pair():
    text = (REPO / "docs" / "coverage.md").read_text()
    matrix, exports = text.split("## Exports")
    rows = {line.split("|")[1].strip().strip("`"): line for line in matrix.splitlines() if line.startswith("| `")}
    export_rows = {line.split("|")[1].strip().strip("`"): line for line in exports.splitlines()
                   if line.startswith("| `")}
    for method, arch in REGISTERED:
        cells = [c.strip() for c in rows[arch].split("|")[3:-1]]
        cell = cells[list(METHODS).index(method)]
        assert cell.startswith("ok ✔"), (method, arch, cell)
        export_cell = [c.strip() for c in export_rows[arch].split("|")[2:-1]][list(METHODS).index(method)]
        assert export_cell.startswith("native") and "**" not in export_cell, (method, arch, export_cell)


@pytest.mark.parametrize("method", METHODS)
def test_a_partial_rotary_family_with_rotary_full_trains_is_lossless_and_exports_everywhere(method):
    """Qwen3.5 (rotary fraction 0.25): with the draft option rotary=full every format the method writes serves
    it, where the copied fraction exports to vLLM only (docs/coverage.md)."""
    row = probe(method, "Qwen3_5ForCausalLM", target("Qwen3_5ForCausalLM"),
                draft_options={**DRAFT_OPTIONS[method], "rotary": "full"}, objective_options=OBJECTIVE_OPTIONS[method])
    assert row["status"] == "ok", row
    assert all(v == "ok" for v in row["exports"].values()), row["exports"]
