"""Registrations, the layer policies, and draft configs built from every registered architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import draftsmith
from draftsmith.errors import ConfigError, DraftNotFoundError
from draftsmith.method import TargetFeatures, TargetHeads
from draftsmith_eagle.registry import (DENSE_ARCHITECTURES, default_aux_layer_ids, default_eagle1_layer_ids,
                                       resolve_eagle1_draft_spec, resolve_eagle3_draft_spec)

ALL_PAIRS = [("eagle1", a) for a in DENSE_ARCHITECTURES] + [("eagle3", a) for a in DENSE_ARCHITECTURES] + [
    ("eagle3", "GptOssForCausalLM")]


@pytest.mark.parametrize("n, expected", [(32, [1, 15, 28]), (36, [1, 17, 32]), (28, [1, 13, 24]), (16, [1, 7, 12]),
                                         (8, [1, 3, 4]), (7, [1, 2, 3])])
def test_default_aux_layer_ids(n, expected):
    ids = default_aux_layer_ids(n)
    assert ids == expected
    assert [i + 1 for i in ids] == [2, n // 2, n - 3]  # = vLLM's default in its input-of-layer convention


@pytest.mark.parametrize("n, expected", [(6, [0, 2, 4]), (5, [0, 2, 3]), (4, [0, 1, 2])])
def test_shallow_targets_spread_instead_of_colliding(n, expected):
    # [1, N//2-1, N-4] collides (N=5: [1,1,1]; N=6: [1,2,2]) or leaves the range (N=4): spread over [0, N-2]
    ids = default_aux_layer_ids(n)
    assert ids == expected
    assert len(set(ids)) == 3 and ids == sorted(ids) and 0 <= ids[0] and ids[-1] <= n - 2


def test_layer_policy_other_counts_and_errors():
    assert default_aux_layer_ids(12, num_aux_layers=4) == [0, 3, 7, 10]
    assert default_aux_layer_ids(12, num_aux_layers=1) == [5]
    with pytest.raises(ValueError, match="only 2 usable"):
        default_aux_layer_ids(3)
    with pytest.raises(ValueError, match=">= 1"):
        default_aux_layer_ids(12, num_aux_layers=0)
    assert default_eagle1_layer_ids(32) == []
    assert draftsmith.get_method("eagle3").default_layer_ids(32) == [1, 15, 28]


def test_resolution_and_registered_methods():
    assert resolve_eagle3_draft_spec(["Foo", "Qwen3ForCausalLM"]).load_draft_cls().__name__ == "LlamaEagle3DraftModel"
    assert resolve_eagle3_draft_spec(["GptOssForCausalLM"]).load_draft_cls().__name__ == "GptOssEagle3DraftModel"
    assert resolve_eagle1_draft_spec(["Phi3ForCausalLM"]).load_draft_cls().__name__ == "LlamaEagleDraftModel"
    assert draftsmith.resolve_draft_spec("eagle2", ["LlamaForCausalLM"]) is resolve_eagle1_draft_spec(
        ["LlamaForCausalLM"])
    # gpt-oss: eagle1 serves it with the Llama-shaped draft (coverage matrix), eagle3 with its own YaRN draft
    assert resolve_eagle1_draft_spec(["GptOssForCausalLM"]).load_draft_cls().__name__ == "LlamaEagleDraftModel"
    with pytest.raises(DraftNotFoundError, match="DeepseekV4ForCausalLM"):
        resolve_eagle1_draft_spec(["DeepseekV4ForCausalLM"])
    for name in ("eagle1", "eagle2", "eagle3"):
        method = draftsmith.get_method(name)
        assert method.load_objective() and method.load_drafter() and "native" in draftsmith.get_registry().formats(name)
    assert set(draftsmith.get_registry().formats("eagle3")) == {"native", "vllm", "sglang", "speculators"}


@pytest.mark.parametrize("method, arch", ALL_PAIRS)
def test_every_registered_pair_builds_and_trains(eagle, method, arch):
    """Build from a tiny target config through the registry, then one objective forward + backward."""
    tc = eagle.target_config(arch, num_layers=6)
    spec = draftsmith.resolve_draft_spec(method, tc.architectures)
    torch.manual_seed(0)
    draft = spec.build(tc, **({"draft_vocab_size": 48} if method == "eagle3" else {}))
    assert draft.config.num_hidden_layers == 1 and draft.config.hidden_size == 64
    heads = TargetHeads(nn.Embedding(128, 64), nn.Linear(64, 128, bias=False), 128, 0, (2,))
    options = dict(draftsmith.get_method(method).default_options)
    options.update(ttt_steps=2) if method == "eagle3" else options.update(feature_noise=0.0)
    objective = draftsmith.get_method(method).load_objective()(draft, heads, **options)
    if hasattr(objective, "prepare"):
        objective.prepare(torch.arange(128))
    request = objective.target_request()
    batch = eagle.make_batch(length=12)
    g = torch.Generator().manual_seed(0)
    feats = TargetFeatures({i: torch.randn(2, 12, 64, generator=g) for i in request.layer_ids},
                           torch.randn(2, 12, 64, generator=g) if request.final_hidden else None)
    with torch.no_grad():  # forward shapes: (B, T, H) hidden, logits over the draft (EAGLE-1: target) vocab
        if method == "eagle3":
            aux = torch.cat([feats.hidden_states[i] for i in request.layer_ids], dim=-1)
            hidden = draft(batch["input_ids"], draft.project_hidden_states(aux), batch["attention_mask"])
            assert hidden.shape == (2, 12, 64) and draft.compute_logits(hidden).shape == (2, 12, 48)
        else:
            hidden = draft(batch["input_ids"], feats.final_hidden, batch["attention_mask"])
            assert hidden.shape == (2, 12, 64) and draft.compute_logits(hidden).shape == (2, 12, 128)
    out = objective(batch, feats)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.num_tokens > 0 and "accuracy" in out.metrics
    grads = [p.grad for p in draft.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert not draft.embed_tokens.weight.requires_grad  # frozen copy of the target's
    assert torch.equal(draft.embed_tokens.weight, heads.embed_tokens.weight)


def test_config_reads_the_target(eagle):
    from draftsmith_eagle.draft_llama import LlamaEagle3DraftModel

    tc = eagle.target_config("Qwen3ForCausalLM", rope_theta=1e6, rms_norm_eps=1e-5, attention_bias=True)
    cfg = LlamaEagle3DraftModel.build_draft_config(tc)
    assert (cfg.head_dim, cfg.num_key_value_heads, cfg.rms_norm_eps) == (16, 2, 1e-5)
    assert cfg.rope_parameters["rope_theta"] == 1e6 and cfg.attention_bias
    assert cfg.draft_vocab_size == 128  # min(32000, target vocab)
    assert cfg.target_layer_ids == [1, 3, 4] and cfg.eagle_config["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]
    block = cfg.draftsmith
    assert block["method"] == "eagle3" and block["target_architectures"] == ["Qwen3ForCausalLM"]
    assert block["layer_id_convention"] == "output-of-layer" and block["target_num_hidden_layers"] == 8
    gpt = eagle.target_config("GptOssForCausalLM")
    spec = draftsmith.resolve_draft_spec("eagle3", gpt.architectures)
    gcfg = spec.build_config(gpt)
    assert gcfg.rope_parameters["rope_type"] == "yarn" and gcfg.attention_bias and gcfg.intermediate_size == 64


def test_draft_options_are_validated(eagle):
    from draftsmith_eagle.draft_llama import LlamaEagle3DraftModel
    from draftsmith_eagle.draft_llama_v12 import LlamaEagleDraftModel

    tc = eagle.target_config()
    build = LlamaEagle3DraftModel.build_draft_config
    assert build(tc, target_layer_ids=[0, 5, -1]).target_layer_ids == [0, 5, -1]
    assert build(tc, num_aux_layers=2).target_layer_ids == [0, 6]
    assert build(tc, num_draft_layers=2).num_hidden_layers == 2
    assert LlamaEagleDraftModel.build_draft_config(tc, draft_num_hidden_layers=3).num_hidden_layers == 3
    for bad, match in [({"target_layer_ids": [1, 1, 2]}, "distinct"), ({"target_layer_ids": [1, 2, 8]}, "range"),
                       ({"target_layer_ids": [1, 2], "num_aux_layers": 3}, "num_aux_layers"),
                       ({"draft_vocab_size": 500}, "draft_vocab_size"), ({"bogus": 1}, "unknown draft option"),
                       ({"num_hidden_layers": 0}, "depth"), ({"num_hidden_layers": 1, "num_draft_layers": 2},
                                                               "conflicting")]:
        with pytest.raises(ConfigError, match=match):
            build(tc, **bad)
