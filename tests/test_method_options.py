"""The typed method contract: declared option tables (validated and routed by core) and the optional
capabilities as runtime protocols."""

from __future__ import annotations

import pytest

from draftsmith import MethodSpec
from draftsmith.decode.engine import DEFAULT_NUM_DRAFT_TOKENS, default_num_tokens
from draftsmith.errors import ConfigError
from draftsmith.method import (HasRunState, PreparesFromTokenCounts, ReportsAcceptanceLengths, SuggestsNumTokens)

SPEC = MethodSpec(name="m", draft_options={"block_size": 8, "mask_token_id": None},
                  objective_options={"num_anchors": 16, "seed": 0}, drafter_options={"threshold": None})


def test_each_section_accepts_only_its_declared_options_and_names_the_right_one():
    assert SPEC.draft_kwargs({"block_size": 4}) == {"block_size": 4}  # the draft applies its own defaults
    assert SPEC.objective_kwargs({"seed": 3}) == {"num_anchors": 16, "seed": 3}
    assert SPEC.drafter_kwargs({}) == {"threshold": None}
    with pytest.raises(ConfigError, match=r"unknown method_options option\(s\) \['block_size'\] \(block_size is a "
                                          r"draft option\); method_options options: \['num_anchors', 'seed'\]"):
        SPEC.objective_kwargs({"block_size": 4})
    with pytest.raises(ConfigError, match=r"\['num_ancors'\]; draft options"):
        SPEC.draft_kwargs({"num_ancors": 4})
    with pytest.raises(ConfigError, match="seed is a method_options option"):
        SPEC.drafter_kwargs({"seed": 1})


def test_route_options_treats_both_config_sections_as_one_namespace():
    spec = MethodSpec(name="r", draft_options={"block_size": 8, "num_anchors": 512},
                      objective_options={"num_anchors": None, "seed": 0})
    draft, objective = spec.route_options({"block_size": 4}, {"num_anchors": 6, "block_size": 4})
    assert draft == {"block_size": 4, "num_anchors": 6}  # num_anchors is declared by both: both get it
    assert objective == {"num_anchors": 6, "seed": 0}
    assert spec.route_options({"seed": 3}, {}) == ({}, {"num_anchors": None, "seed": 3})  # routed to the objective
    with pytest.raises(ConfigError, match=r"\['block_size'\] given in both draft and method_options with different "
                                          r"values: block_size=4 vs 5"):
        spec.route_options({"block_size": 4}, {"block_size": 5})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['blok_size'\]; draft options: \['block_size', "
                                          r"'num_anchors'\]; method_options: \['num_anchors', 'seed'\]"):
        spec.route_options({"blok_size": 4}, {})
    legacy = MethodSpec(name="old", draft_options={"k": 1}, default_options={"scale": 1.0})
    assert legacy.route_options({"k": 2}, {"x": 1}) == ({"k": 2}, {"scale": 1.0, "x": 1})
    with pytest.raises(ConfigError, match="unknown draft option"):
        legacy.route_options({"x": 1}, {})


def test_undeclared_tables_pass_through_and_default_options_stays_the_objective_defaults():
    legacy = MethodSpec(name="old", default_options={"scale": 1.0})  # an older third-party plugin
    assert legacy.objective_options is None and legacy.default_options == {"scale": 1.0}
    assert legacy.objective_kwargs({"anything": 2}) == {"scale": 1.0, "anything": 2}
    assert legacy.draft_kwargs({"x": 1}) == {"x": 1} and legacy.drafter_kwargs({"y": 2}) == {"y": 2}
    assert SPEC.default_options == {"num_anchors": 16, "seed": 0}
    stamped = SPEC.with_provenance("p", "dist", "1.0")  # dataclasses.replace keeps both names consistent
    assert stamped.default_options == SPEC.default_options and stamped.plugin == "p"
    with pytest.raises(ValueError, match="differ"):
        MethodSpec(name="x", objective_options={"a": 1}, default_options={"a": 2})
    assert SPEC.describe()["draft_options"] == ["block_size", "mask_token_id"]


def test_optional_capabilities_are_runtime_protocols():
    class Bare:
        def target_request(self): ...

        def __call__(self, batch, features): ...

    class Full(Bare):
        def prepare(self, token_counts): ...

        def acceptance_lengths(self, batch, features): ...

        def run_state(self):
            return {}

        def load_run_state(self, state): ...

    assert not isinstance(Bare(), (PreparesFromTokenCounts, ReportsAcceptanceLengths, HasRunState))
    assert all(isinstance(Full(), p) for p in (PreparesFromTokenCounts, ReportsAcceptanceLengths, HasRunState))


def test_engine_reads_only_the_declared_default_num_tokens():
    class Quiet:
        max_tokens = 3  # no longer probed: only SuggestsNumTokens counts
        block_size = 9

    class Suggests:
        default_num_tokens = 5

    assert isinstance(Suggests(), SuggestsNumTokens) and not isinstance(Quiet(), SuggestsNumTokens)
    assert default_num_tokens(Suggests()) == 5 and default_num_tokens(Quiet()) == DEFAULT_NUM_DRAFT_TOKENS


@pytest.mark.parametrize("name", ["eagle1", "eagle2", "eagle3", "dflash", "dspark"])
def test_first_party_methods_declare_every_option_table(name):
    """Core checks and routes options only for declared tables: every first-party method declares all three."""
    import draftsmith

    method = draftsmith.get_method(name)
    for table in (method.draft_options, method.objective_options, method.drafter_options):
        assert isinstance(table, dict) and all(isinstance(k, str) for k in table)
    assert method.default_options == method.objective_options
