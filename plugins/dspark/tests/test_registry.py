"""DSpark registrations and the layer-id rule (nemo-automodel.md §1.4 worked examples, methods.md §3.6)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import draftsmith
from draftsmith.errors import ConfigError, DraftNotFoundError
from draftsmith_dspark.registry import (DSPARK_DRAFT_REGISTRY, DraftSpec, build_target_layer_ids,
                                        resolve_dspark_draft_spec, validate_target_layer_ids)


@pytest.mark.parametrize("n, k, expected", [
    (36, 5, [1, 10, 18, 26, 35]),  # step 8.5: 9.5 -> 10, 26.5 -> 26 (banker's rounding)
    (28, 3, [1, 14, 27]),
    (28, 5, [1, 8, 14, 20, 27]),
    (32, 5, [1, 8, 16, 24, 31]),
    (64, 5, [1, 16, 32, 48, 63]),
    (28, 1, [27]),
    (4, 5, [1, 2, 3]),  # k clamped to N - 1
    (4, 2, [1, 3]),
    (2, 3, [1]),
    (3, 2, [1, 2]),
])
def test_worked_examples(n, k, expected):
    ids = build_target_layer_ids(n, k)
    assert ids == expected
    assert all(1 <= i <= n - 1 for i in ids) and ids == sorted(set(ids))


def test_default_count_follows_num_draft_layers_then_five():
    assert build_target_layer_ids(36) == [1, 10, 18, 26, 35]
    assert build_target_layer_ids(36, num_draft_layers=3) == build_target_layer_ids(36, 3) == [1, 18, 35]
    assert build_target_layer_ids(36, 2, num_draft_layers=5) == [1, 35]  # explicit count wins


def test_method_layer_policy_is_this_rule():
    method = draftsmith.get_method("dspark")
    assert method.default_layer_ids(36, **method.default_options) == [1, 10, 18, 26, 35]


def test_method_declares_the_option_tables_once():
    from draftsmith_dspark import config
    from draftsmith_dspark.registry import DRAFT_OPTIONS, DRAFTER_OPTIONS, OBJECTIVE_OPTIONS

    method = draftsmith.get_method("dspark")
    assert method.draft_options == DRAFT_OPTIONS and method.objective_options == OBJECTIVE_OPTIONS
    assert method.drafter_options == DRAFTER_OPTIONS and method.default_options == OBJECTIVE_OPTIONS
    assert config.DRAFT_OPTIONS is DRAFT_OPTIONS  # config.py re-exports the same tables
    # options shared by the draft and the objective reach both, wherever the user wrote them
    draft, objective = method.route_options({"mask_token_id": 5}, {"num_anchors": 8, "confidence_head_alpha": 0.0})
    assert draft == {"mask_token_id": 5, "num_anchors": 8, "confidence_head_alpha": 0.0}
    assert objective["num_anchors"] == 8 and objective["confidence_head_alpha"] == 0.0 and objective["seed"] == 0
    with pytest.raises(ConfigError, match="markov_ranks"):
        method.route_options({"markov_ranks": 3}, {})


def test_explicit_ids_are_validated_and_may_use_embedding_output():
    assert build_target_layer_ids(36, target_layer_ids=[-1, 1, 9, 17, 25, 33]) == [-1, 1, 9, 17, 25, 33]
    assert validate_target_layer_ids([0, 35], 36) == [0, 35]
    for bad, msg in [([], "empty"), ([1, 1], "duplicates"), ([5, 3], "strictly increasing"),
                     ([36], "out of range"), ([-2], "out of range"), ([1.5], "integers"), ("1,2", "list")]:
        with pytest.raises(ConfigError, match=msg):
            validate_target_layer_ids(bad, 36)


@pytest.mark.parametrize("bad", [1, 0, -3, "36", True])
def test_bad_target_depth(bad):
    with pytest.raises(ConfigError):
        build_target_layer_ids(bad, 5)


def test_bad_feature_count():
    with pytest.raises(ConfigError, match="positive"):
        build_target_layer_ids(36, 0)


def test_resolution_and_nemo_views():
    spec = resolve_dspark_draft_spec(["SomethingElse", "Qwen3MoeForCausalLM"])
    assert spec.draft_class_path == "draftsmith_dspark.draft_qwen3:Qwen3DSparkModel"
    assert "Qwen3ForCausalLM" in DSPARK_DRAFT_REGISTRY and len(DSPARK_DRAFT_REGISTRY) >= 2
    assert DSPARK_DRAFT_REGISTRY["Qwen3ForCausalLM"].method == "dspark"
    assert DraftSpec is draftsmith.DraftSpec
    with pytest.raises(DraftNotFoundError, match="Qwen3ForCausalLM"):
        resolve_dspark_draft_spec(["DeepseekV4ForCausalLM"])


def test_registry_module_is_torch_free():
    code = ("import sys, draftsmith_dspark.registry, draftsmith_dspark.plugin; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
