"""Target families beyond the dense Llama shape, built from config: every tiny family builds and runs; a gpt-oss
target (attention sinks: transformers refuses SDPA for it) loads through ``load_target``'s ``auto`` attention;
the hardest families train, are lossless under ``draftsmith eval --check-lossless`` and export through the CLI;
hybrid linear-attention targets stay exact after rejected drafts."""

from __future__ import annotations

import json

import pytest
import torch

from draftsmith.target import load_target
from draftsmith.testing import known_tiny_architectures, make_tiny_target, tiny_target_config

from support.cli import run_cli, subprocess_env
from support.tiny import make_chat_data, make_tokenizer


@pytest.mark.parametrize("arch", known_tiny_architectures())
def test_every_tiny_family_builds_and_runs(arch):
    config = tiny_target_config(arch, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    try:
        model = make_tiny_target(config, attn_implementation="sdpa")
    except ValueError:
        model = make_tiny_target(config, attn_implementation="eager")
    logits = model(torch.randint(3, 120, (1, 12))).logits
    assert logits.shape == (1, 12, 128) and torch.isfinite(logits).all()
    assert type(model).__name__ == arch


def test_gpt_oss_loads_with_auto_attention(tmp_path):
    config = tiny_target_config("GptOssForCausalLM", pad_token_id=0, bos_token_id=1, eos_token_id=2)
    make_tiny_target(config, attn_implementation="eager").save_pretrained(tmp_path / "tgt")
    with pytest.raises(Exception, match="scaled_dot_product_attention"):
        load_target(tmp_path / "tgt", attn_implementation="sdpa")  # what draftsmith used to force
    assert load_target(tmp_path / "tgt").config._attn_implementation == "eager"


BLOCK = ["--set", "draft.mask_token_id=3", "--set", "draft.num_draft_layers=1", "--set", "draft.block_size=4",
         "--set", "method_options.num_anchors=8"]
# the hardest families, one method each (every method appears): sinks + YaRN + sliding window, sliding + global
# layers with tied embeddings, hybrid linear attention, MLA + MoE, Granite's logit / embedding multipliers
CLI_CASES = {"GptOssForCausalLM": ("eagle3", ["--set", "method_options.ttt_steps=2"]),
             "Gemma3ForCausalLM": ("dflash", BLOCK),
             "Qwen3_5ForCausalLM": ("dspark", BLOCK + ["--set", "draft.markov_rank=8",
                                                       "--set", "draft.target_layer_ids=[1,2]"]),
             "DeepseekV3ForCausalLM": ("eagle1", []),
             "GraniteForCausalLM": ("eagle3", ["--set", "method_options.ttt_steps=2"])}


def _no_bare_constants(name: str):
    raise AssertionError(f"`eval --json` wrote a bare {name}, which strict JSON parsers reject")


@pytest.mark.parametrize("arch", list(CLI_CASES))
def test_a_family_target_trains_and_is_lossless_through_the_cli(tmp_path, arch):
    """What a user runs: a saved target of the family, `draftsmith train`, then `draftsmith eval
    --check-lossless` (the target's own greedy output token for token), then `draftsmith export` to an engine."""
    method, extra = CLI_CASES[arch]
    config = tiny_target_config(arch, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    make_tiny_target(config, attn_implementation="auto", head_scale=4.0).save_pretrained(tmp_path / "tgt")
    make_tokenizer().save_pretrained(tmp_path / "tgt")
    data = make_chat_data(tmp_path / "d.jsonl", n=16)
    env = subprocess_env()
    res = run_cli(["train", "--method", method, "--target", str(tmp_path / "tgt"), "--data", str(data),
                   "--output-dir", str(tmp_path / "run"), "--max-steps", "3", "--batch-size", "4", "--seq-len", "64",
                   "--set", "train.progress=false", *extra], env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}]}) + "\n"
                               for q in ("red cat", "one two three")))
    res = run_cli(["eval", "--target", str(tmp_path / "tgt"), "--draft", str(tmp_path / "run" / "final"),
                   "--prompts", str(prompts), "--max-new-tokens", "24", "--check-lossless", "--no-baseline",
                   "--json", "--device", "cpu"], env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout, parse_constant=_no_bare_constants)  # strict JSON: no bare NaN
    assert report["lossless"]["ok"] is True and report["generated_tokens"] == 48
    assert report["speedup"] == "nan"  # --no-baseline: no speedup, written as the string JSON can hold
    if method != "eagle1":  # EAGLE-1 has no engine format (docs/coverage.md)
        res = run_cli(["export", "--draft", str(tmp_path / "run" / "final"), "--format", "vllm",
                       "--out", str(tmp_path / "vllm")], env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        res = run_cli(["check-export", str(tmp_path / "vllm"), "--engine", "vllm", "--target", str(tmp_path / "tgt")],
                      env=env)
        assert res.returncode == 0, res.stderr[-2000:]


HYBRID = ("Qwen3_5ForCausalLM", "Qwen3NextForCausalLM")


def _oracle_run(arch: str, corrupt_every: int):
    """Greedy speculative decoding with drafts that are right except at known slots (so rounds are rejected
    part-way) against the target's own greedy output."""
    from draftsmith.decode import SpeculativeDecoder, generate_plain
    from draftsmith.decode.testing import OracleDrafter, every_nth

    # the random init's near-uniform head (small argmax margins): a state off by 1e-2 flips tokens
    model = make_tiny_target(tiny_target_config(arch, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    prompt = torch.tensor([5, 17, 33, 9, 100, 7])
    ref = generate_plain(model, prompt, 40, eos_token_ids=()).tokens
    drafter = OracleDrafter(reference=prompt.tolist() + ref, corrupt=every_nth(corrupt_every), vocab_size=128)
    out = SpeculativeDecoder(model, drafter, num_draft_tokens=4, eos_token_ids=()).generate(prompt, 40)
    return out, ref


@pytest.mark.parametrize("arch", HYBRID)
def test_hybrid_linear_attention_targets_stay_lossless_after_rejections(arch, monkeypatch):
    """Before transformers 5.25 its crop does not roll back a linear-attention layer's recurrent state: the engine
    restores a snapshot and re-runs the committed tokens. From 5.25 the layers record the states a crop needs and
    the engine crops them like the others (no recompute forward). Either way rejected drafts leave no trace."""
    from transformers import DynamicCache

    from draftsmith.decode import SpeculativeDecoder
    from draftsmith.decode import cache as kv

    recomputes = []
    original = SpeculativeDecoder._recompute
    monkeypatch.setattr(SpeculativeDecoder, "_recompute",
                        lambda self, *a, **k: (recomputes.append(1), original(self, *a, **k))[1])
    out, ref = _oracle_run(arch, corrupt_every=3)
    assert any(r.accepted < r.drafted for r in out.rounds), "no round was rejected: the test would prove nothing"
    assert out.tokens == ref
    probe = DynamicCache(config=tiny_target_config(arch))
    assert kv.has_recurrent_layers(probe)
    if kv.records_recurrent_history(probe):
        assert not recomputes  # transformers' own crop was exact
    else:
        assert len(recomputes) == sum(r.accepted < r.drafted for r in out.rounds)


def test_tree_drafting_on_a_linear_attention_target_is_refused():
    from draftsmith.decode import SpeculativeDecoder
    from draftsmith.decode.testing import OracleTreeDrafter
    from draftsmith.errors import DraftsmithError

    model = make_tiny_target(tiny_target_config("Qwen3_5ForCausalLM", pad_token_id=0, bos_token_id=1,
                                                eos_token_id=2))
    prompt = torch.tensor([5, 17, 33, 9])
    drafter = OracleTreeDrafter(reference=prompt.tolist() + [3] * 40, vocab_size=128)
    with pytest.raises(DraftsmithError, match="linear-attention layers"):
        SpeculativeDecoder(model, drafter, eos_token_ids=()).generate(prompt, 16)


@pytest.mark.parametrize("arch", HYBRID)
def test_rewinding_a_linear_attention_cache_is_exact_where_crop_is_not(arch):
    """Prefill, verify 4 drafts, keep 1: the next logits after the engine's rewind + recompute equal a forward
    without cache; after transformers' own crop they do not (its crop leaves the rejected drafts in the
    recurrent state) — unless it records recurrent states for the crop (transformers ≥ 5.25): then both are
    exact."""
    from transformers import DynamicCache

    from draftsmith.decode import cache as kv
    from draftsmith.decode.plain import cache_kwargs

    model = make_tiny_target(tiny_target_config(arch, pad_token_id=0, bos_token_id=1, eos_token_id=2))
    prompt, block = torch.tensor([[5, 17, 33, 9, 100, 7]]), torch.tensor([[40, 41, 42, 43, 44]])
    committed = block[:, :2]  # anchor + 1 accepted draft
    want = model(torch.cat([prompt, committed, block[:, 2:3]], 1), use_cache=False).logits[0, -1]

    def after(rewind: bool) -> torch.Tensor:
        cache = DynamicCache(config=model.config)
        model(prompt, **cache_kwargs(model, cache))
        kv.enable_rollback(cache, block.shape[1])
        history.append(kv.records_recurrent_history(cache))
        snapshot = kv.snapshot_recurrent(cache)
        assert snapshot is not None
        model(block, **cache_kwargs(model, cache))  # the verification forward
        if rewind:
            kv.rewind_recurrent(cache, snapshot, prompt.shape[1])
            model(committed, **cache_kwargs(model, cache))
            kv.crop(cache, prompt.shape[1] + 2)
        else:
            kv.crop(cache, prompt.shape[1] + 2)
        return model(block[:, 2:3], **cache_kwargs(model, cache)).logits[0, -1]

    history: list[bool] = []
    torch.testing.assert_close(after(rewind=True), want, rtol=1e-5, atol=1e-5)
    cropped = after(rewind=False)
    if history[-1]:  # transformers keeps the recurrent states a crop needs
        torch.testing.assert_close(cropped, want, rtol=1e-5, atol=1e-5)
    else:
        assert (cropped - want).abs().max() > 1e-4  # Qwen3.5: 1.7e-2, Qwen3-Next: 6e-4
