"""Per-family conventions, checked against the HF reference layers of each tiny target (assert_close):

* the teacher a draft learns from is the target's own distribution — ``TargetHeads.target_logits`` of the captured
  post-norm state equals the target's logits, including what its forward does after ``lm_head`` (Granite's
  ``logits_scaling``, Cohere's ``logit_scale``, Gemma's ``final_logit_softcapping``), also after an offline
  feature cache round trip, and through each objective's teacher path;
* every method's draft rotates like the target's full-attention layers (rope type incl. YaRN / proportional,
  theta, partial rotary, head_dim) — same cos/sin at the same positions;
* the draft config takes the target's head_dim, activation, eps and bias flags;
* tied-embedding targets (Gemma, SmolLM3, Ernie 4.5): the drafts' embedding and (DSpark) frozen head are the
  target's one matrix.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import draftsmith
from draftsmith.coverage import spec_for, tiny_family_target, writer_options
from draftsmith.method import TargetRequest
from draftsmith.nn.rotary import RotaryEmbedding
from draftsmith.target import run_target, target_heads
from draftsmith.testing import known_tiny_architectures, make_tiny_target

from support.coverage import DRAFT_OPTIONS, METHODS

# DeepSeek-V4 is not served (several residual streams; draftsmith.conventions.UNSERVED_FAMILIES)
FAMILIES = [a for a in known_tiny_architectures() if a != "DeepseekV4ForCausalLM"]
_TARGETS: dict = {}


def target(arch: str):
    if arch not in _TARGETS:
        _TARGETS[arch] = tiny_family_target(arch)[0]
    return _TARGETS[arch]


def cohere_target():
    import transformers

    from draftsmith.testing import TINY_SIZES

    config = transformers.CohereConfig(**{**TINY_SIZES, "num_hidden_layers": 2, "pad_token_id": 0,
                                          "bos_token_id": 1, "eos_token_id": 2, "logit_scale": 0.0625})
    return make_tiny_target(config, head_scale=4.0)


def _final_and_logits(model, ids):
    features, out = run_target(model, TargetRequest(layer_ids=(0,), final_hidden=True), ids)
    return features.final_hidden, out.logits


@pytest.mark.parametrize("arch", FAMILIES + ["CohereForCausalLM"])
def test_the_teacher_is_the_targets_own_distribution(arch):
    model = cohere_target() if arch == "CohereForCausalLM" else target(arch)
    ids = torch.randint(3, 120, (2, 10), generator=torch.Generator().manual_seed(0))
    final, logits = _final_and_logits(model, ids)
    heads = target_heads(model)
    torch.testing.assert_close(heads.target_logits(final), logits.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,scale,softcap", [("GraniteForCausalLM", 1 / 8, None),
                                                ("Gemma2ForCausalLM", 1.0, 30.0),
                                                ("Gemma4ForCausalLM", 1.0, 30.0),
                                                ("CohereForCausalLM", 0.0625, None)])
def test_targets_that_transform_their_logits_are_read_as_such(arch, scale, softcap):
    """The raw lm_head output differs from the target's logits here, so the rule is doing something."""
    model = cohere_target() if arch == "CohereForCausalLM" else target(arch)
    heads = target_heads(model)
    assert heads.logit_scale == pytest.approx(scale) and heads.logit_softcap == softcap
    final, logits = _final_and_logits(model, torch.randint(3, 120, (1, 12)))
    assert (heads.lm_head(final) - logits).abs().max() > 1e-3


def test_offline_feature_caches_keep_the_logit_transform(tmp_path):
    from draftsmith.data.features import FeatureCache, save_heads

    model = target("GraniteForCausalLM")
    heads = target_heads(model)
    block = save_heads(tmp_path, heads)
    (tmp_path / "manifest.json").write_text(__import__("json").dumps({"heads": block, "splits": {},
                                                                      "layer_ids": [0]}))
    again = FeatureCache(tmp_path).heads()
    assert (again.logit_scale, again.logit_softcap) == (heads.logit_scale, heads.logit_softcap)
    final, logits = _final_and_logits(model, torch.randint(3, 120, (1, 8)))
    torch.testing.assert_close(again.target_logits(final), logits, rtol=1e-5, atol=1e-5)


def test_every_objectives_teacher_uses_the_transform():
    """EAGLE's target logits, DFlash's KD teacher and DSpark's fused L1 teacher, on Granite (logits ÷ 8)."""
    from draftsmith_dspark.fused_logits import slot_terms
    from draftsmith_dspark.loss import fused_dspark_loss

    model = target("GraniteForCausalLM")
    heads = target_heads(model)
    final, logits = _final_and_logits(model, torch.randint(3, 120, (1, 12)))

    eagle = draftsmith.get_method("eagle3")
    draft = spec_for("eagle3", "GraniteForCausalLM")[0].build(model.config)
    objective = eagle.load_objective()(draft, heads, **eagle.default_options)
    torch.testing.assert_close(objective._target_logits(final[0]), logits[0], rtol=1e-5, atol=1e-5)

    dflash = draftsmith.get_method("dflash")
    opts = {**dflash.default_options, **DRAFT_OPTIONS["dflash"], "num_anchors": 2, "kd_weight": 0.5}
    draft = spec_for("dflash", "GraniteForCausalLM")[0].build(model.config, **DRAFT_OPTIONS["dflash"])
    objective = dflash.load_objective()(draft, heads, **opts)
    from draftsmith.method import TargetFeatures

    feats = TargetFeatures(hidden_states={}, final_hidden=final)
    anchors = torch.tensor([[2]])
    sel = (torch.tensor([0, 0]), torch.tensor([0, 0]), torch.tensor([1, 2]))
    student = torch.randn(2, 128)
    want = objective._kd(student, feats, anchors, sel)
    from draftsmith_dflash.objective import distillation_kl

    teacher = logits[0, torch.tensor([2, 3])].float()
    torch.testing.assert_close(want, distillation_kl(student, teacher, objective.kd_temperature))

    # DSpark: one block of 3 slots; the fused loss's L1 term against the target's own distribution
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(1, 1, 3, 64, generator=g)
    ids = torch.randint(3, 120, (1, 1, 3), generator=g)
    mask = torch.ones(1, 1, 3, dtype=torch.bool)
    positions = torch.tensor([[[3, 4, 5]]])
    res = fused_dspark_loss(hidden, ids, mask, torch.ones(1, 1, dtype=torch.bool), heads.lm_head.weight,
                            teacher_hidden=final, teacher_positions=positions, teacher_weight=heads.lm_head.weight,
                            teacher_transform=heads.adjust_logits, ce_loss_alpha=0.0, l1_loss_alpha=1.0,
                            loss_decay_gamma=None)
    _ce, l1, _pred = slot_terms(heads.lm_head(hidden[0, 0]), logits[0, 3:6], ids[0, 0])
    torch.testing.assert_close(res.metrics["tv_loss"], l1.mean(), rtol=1e-5, atol=1e-6)
    untransformed = slot_terms(heads.lm_head(hidden[0, 0]), heads.lm_head(final[0, 3:6]), ids[0, 0])[1]
    assert (untransformed.mean() - l1.mean()).abs() > 1e-3  # the raw teacher would be another distribution


def _target_rotary(model, x, positions):
    rotary = model.model.rotary_emb
    kwargs = {"layer_type": "full_attention"} if "layer_type" in inspect.signature(rotary.forward).parameters else {}
    return rotary(x, positions, **kwargs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", FAMILIES)
def test_drafts_rotate_like_the_targets_full_attention_layers(arch, method):
    model = target(arch)
    draft = spec_for(method, arch)[0].build(model.config, **DRAFT_OPTIONS[method])
    rotary = [m for m in draft.modules() if isinstance(m, RotaryEmbedding)]
    assert rotary, f"{type(draft).__name__} has no RotaryEmbedding"
    positions = torch.arange(0, 3000, 37)[None]  # well past the tiny sliding window and into YaRN's range
    x = torch.zeros(1, positions.shape[1], 8)
    cos_t, sin_t = _target_rotary(model, x, positions)
    cos_d, sin_d = rotary[0](x, positions)
    if cos_t.shape[-1] * 2 == cos_d.shape[-1]:  # gpt-oss keeps half the rotary dims (its rotate splits halves)
        cos_t, sin_t = torch.cat([cos_t, cos_t], -1), torch.cat([sin_t, sin_t], -1)
    torch.testing.assert_close(cos_d, cos_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sin_d, sin_t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", FAMILIES)
def test_draft_configs_take_the_targets_layer_conventions(arch):
    from draftsmith.conventions import draft_fields, full_attention_attr, text_config

    model = target(arch)
    text = text_config(model.config)
    fields = draft_fields(model.config)
    attention = model.model.layers[[i for i, t in enumerate(getattr(text, "layer_types", None) or ["full"])
                                    if t != "sliding_attention" and t != "linear_attention"][0]].self_attn
    head_dim = getattr(attention, "head_dim", None) or full_attention_attr(text, "head_dim")
    if arch == "DeepseekV3ForCausalLM":  # MLA: the draft's heads are the rope part (qk_rope_head_dim)
        head_dim = text.qk_rope_head_dim
    assert fields["head_dim"] == head_dim, (fields["head_dim"], head_dim)
    assert fields["hidden_act"] == (getattr(text, "hidden_act", None) or text.hidden_activation)
    assert fields["rms_norm_eps"] == pytest.approx(text.rms_norm_eps)
    assert fields["attention_bias"] == bool(getattr(text, "attention_bias", False))
    for method in METHODS:
        config = spec_for(method, arch)[0].build_config(model.config, **DRAFT_OPTIONS[method])
        assert config.hidden_size == text.hidden_size and config.vocab_size == text.vocab_size
        assert config.head_dim == fields["head_dim"], method


TIED = [a for a in FAMILIES if getattr(target(a).config.get_text_config(), "tie_word_embeddings", False)]


@pytest.mark.parametrize("arch", TIED)
def test_tied_targets_give_drafts_the_embedding_as_head(arch):
    """A tied target's head is its embedding matrix: EAGLE-3 copies that embedding, DSpark's frozen head (the
    target's lm_head) is that same matrix, DFlash reads both through the target's modules."""
    model = target(arch)
    heads = target_heads(model)
    assert heads.lm_head.weight.data_ptr() == heads.embed_tokens.weight.data_ptr()
    eagle = draftsmith.get_method("eagle3")
    draft = spec_for("eagle3", arch)[0].build(model.config)
    eagle.load_objective()(draft, heads, **eagle.default_options)
    torch.testing.assert_close(draft.embed_tokens.weight, heads.embed_tokens.weight)
    dspark = draftsmith.get_method("dspark")
    draft = spec_for("dspark", arch)[0].build(model.config, **DRAFT_OPTIONS["dspark"])
    dspark.load_objective()(draft, heads, **{**dspark.default_options, **DRAFT_OPTIONS["dspark"]})
    torch.testing.assert_close(draft.lm_head.weight, heads.embed_tokens.weight)


def test_the_tied_families_are_the_expected_ones():
    assert set(TIED) >= {"Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma4ForCausalLM", "SmolLM3ForCausalLM",
                         "Ernie4_5ForCausalLM"}


def test_a_run_that_captures_the_last_layer_says_it_cannot_be_served():
    """DSpark's default rule (NeMo's) ends at the last decoder layer, which no engine captures: `train` says so at
    the start, not `export` after the run."""
    from draftsmith.testing import tiny_target_config
    from draftsmith.train.setup import _warn_unservable_layers
    from draftsmith_dspark.registry import build_target_layer_ids

    config = tiny_target_config("Qwen3ForCausalLM", num_layers=6)
    lines: list[str] = []
    _warn_unservable_layers(TargetRequest(layer_ids=tuple(build_target_layer_ids(6, 1))), config, lines.append)
    assert len(lines) == 1 and "target layer 5" in lines[0] and "ids <= 4" in lines[0]
    lines.clear()
    _warn_unservable_layers(TargetRequest(layer_ids=(1, 4), final_hidden=True), config, lines.append)
    assert lines == []


@pytest.mark.parametrize("method", METHODS)
def test_rotary_full_gives_partial_rotary_targets_a_draft_every_client_serves(method, tmp_path):
    """Qwen3.5 rotates 4 of 16 head dims; with rotary=full the draft rotates all 16 (same θ) and the formats that
    refuse the copied fraction export it."""
    from draftsmith.export_check import FORMAT_ENGINE, check_export
    from draftsmith.formats import whole_head_rotary_problem

    model = target("Qwen3_5ForCausalLM")
    spec = spec_for(method, "Qwen3_5ForCausalLM")[0]
    copied = spec.build(model.config, **DRAFT_OPTIONS[method])
    full = spec.build(model.config, **DRAFT_OPTIONS[method], rotary="full")
    for draft, rotated in ((copied, 4), (full, 16)):
        rotary = [m for m in draft.modules() if isinstance(m, RotaryEmbedding)][0]
        assert 2 * rotary.inv_freq.numel() == rotated
    assert whole_head_rotary_problem(copied.config, "x", "y") and not whole_head_rotary_problem(full.config, "x", "y")
    assert full.config.rope_parameters["rope_theta"] == copied.config.rope_parameters["rope_theta"]
    m = draftsmith.get_method(method)
    m.load_objective()(full, target_heads(model), **{**m.default_options, **DRAFT_OPTIONS[method]})  # copies heads
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # off the init (zero / constant tensors are what check-export calls never trained)
        for name, p in full.named_parameters():
            if "embed_tokens" not in name and "lm_head" not in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    model.save_pretrained(tmp_path / "tgt")
    block = getattr(full.config, "draftsmith", None)
    if isinstance(block, dict):
        full.config.draftsmith = {**block, "target_name_or_path": str(tmp_path / "tgt")}
    for name, fmt in draftsmith.get_registry().formats(method).items():
        if fmt.writer is None or name == "native":
            continue
        writer = fmt.load_writer()
        writer(full, tmp_path / name, **writer_options(writer, tmp_path / "tgt"))
        assert check_export(tmp_path / name, engine=FORMAT_ENGINE.get(name), target=str(tmp_path / "tgt"))[1] == []


def test_rotary_must_be_target_or_full():
    from draftsmith.errors import ConfigError

    with pytest.raises(ConfigError, match="rotary must be one of target, full"):
        spec_for("eagle3", "Qwen3ForCausalLM")[0].build(target("Qwen3ForCausalLM").config, rotary="half")
