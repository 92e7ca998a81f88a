"""The engine with every installed method's real drafter, on tiny targets of several architectures.

* random untrained drafts: greedy speculative output == the target's greedy output (also with EOS inside a
  block and at the length limit); sampling runs and stays in range;
* briefly trained drafts (τ well above 1, so acceptance paths are exercised): lossless on several prompts, and
  the objective's trajectory replay τ == the real greedy τ, round for round, where the method provides
  ``acceptance_lengths``;
* ``draftsmith eval`` in a subprocess with an installed plugin's saved draft (entry-point discovery, loading).

Parametrised over the methods whose drafter imports; a first-party plugin that is installed but whose drafter
does not import fails ``test_installed_first_party_drafters_import``.
"""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch

import draftsmith
from draftsmith.decode import DecodeStats, SamplingConfig, SpeculativeDecoder, generate_plain
from draftsmith.decode.estimate import replay_tau
from draftsmith.decode.testing import save_tiny_target, tiny_target
from draftsmith.target import run_target, target_heads

from support.cli import run_cli

FIRST_PARTY = {"eagle": ("eagle1", "eagle2", "eagle3"), "dflash": ("dflash",), "dspark": ("dspark",)}
ARCHS = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# small drafts for 4-layer targets; the mask token is the last id (never pad 0 / eos 2)
DRAFT_OPTIONS = {"dflash": {"mask_token_id": 127, "num_draft_layers": 1, "block_size": 8},
                 "dspark": {"mask_token_id": 127, "num_draft_layers": 1, "block_size": 6, "markov_rank": 16}}
OBJECTIVE_OPTIONS = {"dflash": {"num_anchors": 16}, "dspark": {"num_anchors": 16}, "eagle3": {"ttt_steps": 4},
                     "eagle1": {}, "eagle2": {}}


def _installed_plugins() -> set[str]:
    return {ep.name for ep in importlib.metadata.entry_points(group="draftsmith")}


def _methods() -> list[str]:
    registry = draftsmith.get_registry()
    names = []
    for plugin, methods in FIRST_PARTY.items():
        for name in methods:
            try:
                registry.get_method(name).load_drafter()
            except Exception:
                continue  # reported by test_installed_first_party_drafters_import
            names.append(name)
    draftsmith.reset_plugins()
    return names


METHODS = _methods()
PAIRS = [(m, a) for m in METHODS for a in ARCHS]


def test_installed_first_party_drafters_import():
    installed = _installed_plugins()
    for plugin, methods in FIRST_PARTY.items():
        if plugin not in installed:
            continue
        for name in methods:
            draftsmith.get_method(name).load_drafter()  # raises with the plugin's import error
    assert METHODS, "no first-party method plugin is installed"


def build(method: str, model, seed: int = 0):
    spec = draftsmith.resolve_draft_spec(method, model.config.architectures)
    torch.manual_seed(seed)
    return spec.build(model.config, **DRAFT_OPTIONS.get(method, {})).float().eval()


def drafter_for(method: str, draft, model):
    return draftsmith.get_method(method).load_drafter()(draft, target_heads(model))


PROMPT = torch.tensor([5, 17, 33, 9, 100, 7, 64, 3])
_TARGETS: dict = {}


def target(arch: str):
    if arch not in _TARGETS:
        _TARGETS[arch] = tiny_target(arch, seed=list(ARCHS).index(arch))
    return _TARGETS[arch]


@pytest.mark.parametrize("method,arch", PAIRS, ids=[f"{m}-{a}" for m, a in PAIRS])
def test_random_draft_is_lossless(method, arch):
    model = target(arch)
    drafter = drafter_for(method, build(method, model), model)
    ref = generate_plain(model, PROMPT, 32, eos_token_ids=())
    out = SpeculativeDecoder(model, drafter, eos_token_ids=()).generate(PROMPT, 32)
    assert out.tokens == ref.tokens
    assert 1 + sum(out.taus) == 32
    # EOS inside a block: the first mid-generation token that did not occur before acts as EOS
    eos = next(t for i, t in enumerate(ref.tokens) if i >= 2 and t not in ref.tokens[:i])
    plain = generate_plain(model, PROMPT, 32, eos_token_ids=[eos])
    out = SpeculativeDecoder(model, drafter, eos_token_ids=[eos]).generate(PROMPT, 32)
    assert out.tokens == plain.tokens and out.stop_reason == "eos"
    sampled = SpeculativeDecoder(model, drafter, sampling=SamplingConfig(temperature=1.0, top_k=50),
                                 eos_token_ids=()).generate(PROMPT, 20)
    assert len(sampled.tokens) == 20 and all(0 <= t < 128 for t in sampled.tokens)
    assert all(1 <= t <= r.drafted + 1 for t, r in zip(sampled.taus, sampled.rounds))


def _train(method: str, model, steps: int = 40):
    """A few optimiser steps on the target's own greedy continuations of random prompts."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 127, (6,), generator=g) for _ in range(4)]
    gens = [generate_plain(model, p, 32, eos_token_ids=()).tokens for p in prompts]
    seqs = torch.stack([torch.cat([p, torch.tensor(x)]) for p, x in zip(prompts, gens)])
    loss_mask = torch.zeros_like(seqs)
    loss_mask[:, 6:] = 1
    batch = {"input_ids": seqs, "attention_mask": torch.ones_like(seqs), "loss_mask": loss_mask}
    spec = draftsmith.get_method(method)
    train_method = spec.drafts_from or method
    draft = build(train_method, model).train()
    options = {**draftsmith.get_method(train_method).default_options, **DRAFT_OPTIONS.get(train_method, {}),
               **OBJECTIVE_OPTIONS[train_method]}
    objective = draftsmith.get_method(train_method).load_objective()(draft, target_heads(model), **options)
    if hasattr(objective, "prepare"):
        objective.prepare(torch.bincount(seqs[loss_mask.bool()], minlength=128))
    features, _ = run_target(model, objective.target_request(), seqs, attention_mask=batch["attention_mask"])
    opt = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(steps):
        loss = objective(batch, features).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return draft.eval(), objective, batch, features, prompts, gens


@pytest.mark.parametrize("method", METHODS)
def test_trained_draft_is_lossless_and_replay_matches(method):
    model = target("qwen3")
    draft, objective, batch, features, prompts, gens = _train(method, model)
    drafter = drafter_for(method, draft, model)
    gamma = {"eagle3": OBJECTIVE_OPTIONS["eagle3"]["ttt_steps"]}.get(method)  # replay is capped by TTT depth
    stats, taus = DecodeStats(), []
    for prompt, gen in zip(prompts, gens):
        out = SpeculativeDecoder(model, drafter, num_draft_tokens=gamma, eos_token_ids=()).generate(prompt, 32)
        assert out.tokens == gen
        stats.add(out)
        taus += out.taus
    assert stats.tau > 1.5, f"{method}: τ {stats.tau:.2f} — the trained draft should be accepted often"
    if method != "eagle2" and hasattr(objective, "acceptance_lengths"):  # eagle2 trees ≠ eagle1 chain replay
        replay = replay_tau(objective, batch, features,
                            num_draft_tokens=SpeculativeDecoder(model, drafter, num_draft_tokens=gamma).num_draft_tokens)
        assert replay.taus == taus
    sampled = SpeculativeDecoder(model, drafter, sampling=SamplingConfig(temperature=0.7),
                                 eos_token_ids=()).generate(prompts[0], 32)
    assert len(sampled.tokens) == 32


def test_eval_cli_subprocess_with_an_installed_plugin(tmp_path, cli_env):
    """Entry-point discovery, load_draft of a saved plugin draft and the whole CLI, in a fresh process."""
    method = next((m for m in ("dflash", "eagle3", "dspark", "eagle1") if m in METHODS), None)
    assert method is not None
    model = save_tiny_target(tmp_path / "target", vocab_size=128)
    draft = build(method, model)
    draft.save_pretrained(tmp_path / "draft")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "what is the time"}]}) + "\n" +
                       json.dumps({"text": "the water of the day"}) + "\n")
    res = run_cli(["eval", "--target", str(tmp_path / "target"), "--draft", str(tmp_path / "draft"),
                   "--prompts", str(prompts), "--max-new-tokens", "16", "--check-lossless", "--json",
                   "--threads", "1"], env=cli_env)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["method"] == method and info["lossless"]["ok"] is True and info["tau"] >= 1.0


TREE_CASES = [c for c in [("eagle1", ["--method", "eagle2"]),
                          ("eagle3", ["--drafter", "draftsmith_eagle.drafting:EagleTreeDrafter"])]
              if "eagle2" in METHODS]


@pytest.mark.parametrize("draft_method,how", TREE_CASES, ids=[c[0] for c in TREE_CASES])
def test_eval_cli_tree_drafting(tmp_path, capsys, draft_method, how):
    """EAGLE-2 trees (eagle1 draft via --method eagle2; eagle3 draft via --drafter): tree proposals verified
    in one pass, still lossless."""
    from draftsmith.cli import run_command

    model = save_tiny_target(tmp_path / "target", vocab_size=128)
    build(draft_method, model).save_pretrained(tmp_path / "draft")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"text": "the water of the day"}) + "\n")
    assert run_command(["eval", "--target", str(tmp_path / "target"), "--draft", str(tmp_path / "draft"),
                        "--prompts", str(prompts), "--max-new-tokens", "16", "--check-lossless", "--json",
                        *how, "--tree", "top_k=3,max_depth=3", "-k", "8"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["drafter"].endswith("EagleTreeDrafter") and info["lossless"]["ok"] is True
    assert info["rounds"] < info["drafted_tokens"] <= 8 * info["rounds"]  # up to 8 nodes per tree
    # a chain drafter rejects tree options with a hint
    assert run_command(["eval", "--target", str(tmp_path / "target"), "--draft", str(tmp_path / "draft"),
                        "--prompts", str(prompts), "--tree", "top_k=3"]) == 1
    assert "--tree needs a tree drafter" in capsys.readouterr().err


@pytest.mark.parametrize("threshold", [0.5, 1.0] if "dspark" in METHODS else [])
def test_dspark_confidence_threshold_shortens_proposals_losslessly(threshold):
    """DSpark's static confidence threshold may cut a proposal to any length, zero included (the round then
    verifies the anchor alone): still the target's greedy output."""
    model = target("qwen3")
    spec = draftsmith.resolve_draft_spec("dspark", model.config.architectures)
    torch.manual_seed(0)
    draft = spec.build(model.config, **DRAFT_OPTIONS["dspark"], enable_confidence_head=True).eval()
    drafter = draftsmith.get_method("dspark").load_drafter()(draft, target_heads(model),
                                                             confidence_threshold=threshold)
    ref = generate_plain(model, PROMPT, 24, eos_token_ids=())
    out = SpeculativeDecoder(model, drafter, eos_token_ids=()).generate(PROMPT, 24)
    assert out.tokens == ref.tokens
    if threshold == 1.0:  # σ(c) < 1 always: every proposal is cut to nothing, every round has τ = 1
        assert all(r.drafted == 0 for r in out.rounds) and out.taus == [1] * 23
