"""The DFlash target-layer rule (methods.md §2.2, §6 item 7) and its defined behaviour on shallow targets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from draftsmith_dflash.registry import build_target_layer_ids


@pytest.mark.parametrize("n, k, expected", [
    (36, 5, [1, 9, 17, 25, 33]), (28, 5, [1, 7, 13, 19, 25]), (32, 5, [1, 8, 15, 22, 29]),
    (40, 5, [1, 10, 19, 28, 37]), (48, 5, [1, 12, 23, 34, 45]), (36, 1, [18]), (36, 3, [1, 17, 33]),
    (28, 3, [1, 13, 25]), (36, 4, [1, 12, 22, 33]), (64, 5, [1, 16, 31, 46, 61]), (28, 1, [14]),
])
def test_z_lab_worked_examples(n, k, expected):
    assert build_target_layer_ids(n, k) == expected


def test_default_is_five_draft_layers_and_method_options_are_ignored():
    assert build_target_layer_ids(36) == [1, 9, 17, 25, 33]
    assert build_target_layer_ids(36, 5, num_anchors=512, loss_decay_gamma=7.0) == [1, 9, 17, 25, 33]
    assert build_target_layer_ids(36, 5, num_feature_layers=3) == [1, 17, 33]


@pytest.mark.parametrize("n, k, expected", [
    (4, 2, [1, 2]),  # z-lab gives the degenerate [1, 1]
    (4, 3, [0, 1, 2]), (4, 4, [0, 1, 2, 3]), (4, 5, [0, 1, 2, 3]), (4, 1, [2]),
    (3, 2, [0, 1]), (2, 2, [0, 1]), (1, 1, [0]), (1, 3, [0]),
    (7, 5, [1, 2, 3, 4, 5]), (8, 5, [1, 2, 3, 4, 5]), (6, 5, [0, 1, 2, 3, 4]),
])
def test_shallow_targets_get_distinct_valid_ids(n, k, expected):
    ids = build_target_layer_ids(n, k)
    assert ids == expected
    assert ids == sorted(set(ids)) and all(0 <= i < n for i in ids)


@pytest.mark.parametrize("n", range(1, 50))
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_always_distinct_increasing_in_range(n, k):
    ids = build_target_layer_ids(n, k)
    assert ids == sorted(set(ids)) and all(0 <= i < n for i in ids)
    assert len(ids) == min(k, n)


@pytest.mark.parametrize("bad", [(0, 5), (36, 0), (36, -1), (36.0, 5), (True, 5)])
def test_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="positive int"):
        build_target_layer_ids(*bad)


def test_registry_and_plugin_modules_stay_torch_free():
    code = ("import sys; import draftsmith_dflash.registry, draftsmith_dflash.plugin; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_method_registration_points_at_real_objects():
    import draftsmith

    method = draftsmith.get_registry().get_method("dflash")
    assert method.default_layer_ids(36, num_draft_layers=5) == [1, 9, 17, 25, 33]
    assert method.load_objective().__name__ == "DFlashObjective"
    assert method.load_drafter().__name__ == "DFlashDrafter"
    formats = draftsmith.get_registry().formats("dflash")
    for fmt in ("native", "vllm"):
        assert formats[fmt].load_writer().__name__ == "export_native"
    assert formats["sglang"].load_writer().__name__ == "export_sglang"  # the z-lab layout + SGLang's causality rule
    spec = draftsmith.resolve_draft_spec("dflash", ["Qwen3ForCausalLM"])
    assert spec.load_draft_cls().__name__ == "Qwen3DFlashDraftModel"


def test_method_declares_the_option_tables_once(dflash):
    import draftsmith
    from draftsmith.errors import ConfigError
    from draftsmith.method import HasRunState, SuggestsNumTokens
    from draftsmith.target import target_heads
    from draftsmith_dflash.drafting import DFlashDrafter
    from draftsmith_dflash.objective import DFlashObjective
    from draftsmith_dflash.registry import DRAFT_OPTIONS, DRAFTER_OPTIONS, OBJECTIVE_OPTIONS

    method = draftsmith.get_method("dflash")
    assert method.draft_options == DRAFT_OPTIONS and method.objective_options == OBJECTIVE_OPTIONS
    assert method.drafter_options == DRAFTER_OPTIONS and method.default_options == OBJECTIVE_OPTIONS
    draft, objective = method.route_options({"mask_token_id": 5, "block_size": 4}, {"num_anchors": 8})
    assert draft == {"mask_token_id": 5, "block_size": 4}
    assert objective["num_anchors"] == 8 and objective["seed"] == 0 and objective["loss_decay_gamma"] == 7.0
    with pytest.raises(ConfigError, match="blok_size"):
        method.route_options({"blok_size": 3}, {})
    # the optional capabilities core relies on, declared by protocol
    s = dflash.make_setup(block_size=4)
    heads = target_heads(s.target)
    obj = DFlashObjective(s.draft, heads, num_anchors=4)
    assert isinstance(obj, HasRunState) and obj.run_state() == {"calls": 0}
    obj.draw_anchors(dflash.make_batch()["loss_mask"].bool())
    assert obj.run_state() == {"calls": 1}  # what training checkpoints save
    drafter = DFlashDrafter(s.draft, heads)
    assert isinstance(drafter, SuggestsNumTokens) and drafter.default_num_tokens == 3  # block_size − 1
