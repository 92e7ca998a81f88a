"""DFlash drafts trained by ``draftsmith train`` and exported by ``draftsmith export`` load strictly in the real
clients, which capture our layers in their convention and reproduce our outputs (fp32); checkpoints the clients
save themselves read back in draftsmith and reproduce the clients' outputs.

* speculators 0.9.0 (``--format speculators``): ``DFlashDraftModel.from_pretrained``, its own anchor-block
  backbone (``_backbone_forward``) over several blocks;
* SpecForge 0.2.0 (``--format zlab`` / ``sglang``) and z-lab dflash 0.1.0 (``--format zlab``): one block over
  a context;
* z-lab's own ``save_pretrained`` (a public-style checkpoint without draftsmith metadata) → ``load_draft``.

Each client runs in its own environment (``scripts/install_interop.sh``; ``$DRAFTSMITH_INTEROP_ENVS``, default
``.interop/``) through a script in ``tests/interop/``. A missing environment is a failure, not a skip.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import draftsmith

from support.cli import run_cli, subprocess_env
from support.interop import run_client_script
from support.tiny import make_chat_data, make_target
from support.train import run_train, toy_config

ENV_OF = {"speculators": "speculators-0.9.0", "specforge": "specforge-0.2.0", "zlab": "zlab-dflash-0.1.0"}
MASK, BLOCK = 3, 4


def _run(client: str, script: str, *args) -> dict:
    """Run ``tests/interop/<script>`` in the client's environment; its JSON report (every script takes
    ``DIR_OR_CONFIG INPUTS OUT.json [SAVE_DIR]``)."""
    return run_client_script(ENV_OF[client], script, args, args[2])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-layer DFlash draft trained 3 steps by the trainer on a tiny Qwen3 target (8 layers)."""
    root = tmp_path_factory.mktemp("interop-dflash")
    target = make_target(root / "target", "qwen3", num_layers=8)
    data = make_chat_data(root / "d.jsonl", n=12)
    cfg = toy_config(root / "dflash", target, data, method="dflash",
                     draft={"mask_token_id": MASK, "num_draft_layers": 2, "block_size": BLOCK},
                     method_options={"num_anchors": 8}, **{"train.max_steps": 3, "data.seq_len": 64})
    return {"root": root, "draft": run_train(cfg).final_dir, "target": target}


def _export(trained, fmt: str) -> Path:
    out = trained["root"] / f"export-{fmt}"
    if not out.exists():
        res = run_cli(["export", "--draft", str(trained["draft"]), "--format", fmt, "--out", str(out)],
                      env=subprocess_env())
        assert res.returncode == 0, res.stderr[-2000:]
    return out


def _target_heads(target: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32).eval()
    return model.get_input_embeddings(), model.get_output_embeddings()


# -- speculators: several blocks through its own backbone ------------------------------------------------------------
def _block_inputs(draft, path: Path, length: int = 24) -> dict:
    g = torch.Generator().manual_seed(0)
    cfg = draft.config
    t = {"ids": torch.randint(4, cfg.vocab_size, (1, length), generator=g),
         "aux": torch.randn(1, length, len(cfg.target_layer_ids) * cfg.hidden_size, generator=g),
         "anchors": torch.tensor([2, 7, 11, 15, 19]),  # < length - block_size (speculators' select_anchors)
         "verifier_last": torch.randn(1, length, cfg.hidden_size, generator=g)}
    save_file(t, str(path))
    return t


def _our_blocks(draft, heads, t) -> tuple[torch.Tensor, torch.Tensor]:
    """Our hidden ``(N·B, H)`` and logits for blocks ``[ids[a], mask × (B−1)]`` at every anchor ``a`` over the
    whole context (each block sees context positions < a, bidirectional inside)."""
    embed, lm_head = heads
    anchors, bs, length = t["anchors"], draft.block_size, t["ids"].shape[1]
    tokens = torch.full((len(anchors), bs), draft.mask_token_id)
    tokens[:, 0] = t["ids"][0, anchors]
    positions = (anchors[:, None] + torch.arange(bs)).reshape(1, -1)  # (1, N·B)
    mask = draft.block_layout(anchors[None], length).dense_mask()  # (1, 1, N·B, T + N·B)
    with torch.no_grad():
        hidden = draft(embed(tokens.reshape(1, -1)), positions, t["aux"], torch.arange(length)[None], mask)[0]
        return hidden, lm_head(hidden)


@pytest.mark.slow
def test_speculators_export_loads_strictly_and_matches_our_blocks(trained):
    root = trained["root"]
    out = _export(trained, "speculators")
    draft = draftsmith.load_draft(trained["draft"]).float().eval()
    t = _block_inputs(draft, root / "spec-inputs.safetensors")
    ours, our_logits = _our_blocks(draft, _target_heads(trained["target"]), t)
    report = _run("speculators", "speculators_dflash.py", out, root / "spec-inputs.safetensors",
                  root / "spec-report.json", root / "spec-saved")
    assert report["missing"] == [] and report["unexpected"] == [] and report["warnings"] == [], report
    assert report["nan_tensors"] == []  # embed_tokens / lm_head / verifier_norm found in the verifier
    ids = list(draft.config.target_layer_ids)
    assert report["aux_layer_ids"] == [i + 1 for i in ids]  # speculators counts in(k)
    assert (report["block_size"], report["mask_token_id"]) == (BLOCK, MASK)
    assert report["sample_from_anchor"] is False and report["sliding_window_non_causal"] is True
    assert report["uses_sliding_window_attn"] is False
    torch.testing.assert_close(torch.tensor(report["hidden"]), ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.tensor(report["logits"]), our_logits, rtol=1e-4, atol=1e-4)
    # the checkpoint speculators itself saved (weights changed) reads back in draftsmith
    read = draftsmith.load_draft(root / "spec-saved")
    assert read.config.target_layer_ids == ids and read.config.num_hidden_layers == 2
    assert read.config.draftsmith["read_from"] == "speculators"
    saved, _ = _our_blocks(read, _target_heads(trained["target"]), t)
    torch.testing.assert_close(saved, torch.tensor(report["saved_hidden"]), rtol=1e-4, atol=1e-4)


# -- SpecForge and z-lab: one block over a context ------------------------------------------------------------------
def _one_block(draft, path: Path, ctx: int = 10) -> torch.Tensor:
    """Random block embeddings and context (saved to ``path``) and our hidden states for them."""
    cfg, g = draft.config, torch.Generator().manual_seed(0)
    bs = cfg.block_size
    noise = torch.randn(1, bs, cfg.hidden_size, generator=g)
    context = torch.randn(1, ctx, len(cfg.target_layer_ids) * cfg.hidden_size, generator=g)
    save_file({"noise": noise, "context": context, "positions": torch.arange(ctx + bs)[None]}, str(path))
    mask = draft.block_layout(torch.tensor([[ctx]]), ctx).dense_mask()  # (1, 1, B, C + B)
    with torch.no_grad():
        return draft(noise, torch.arange(ctx, ctx + bs)[None], context, torch.arange(ctx)[None], mask)[0]


@pytest.mark.slow
@pytest.mark.parametrize("client, script, fmt", [("specforge", "specforge_dflash.py", "zlab"),
                                                  ("specforge", "specforge_dflash.py", "sglang"),
                                                  ("zlab", "zlab_dflash.py", "zlab")])
def test_zlab_layout_loads_strictly_in_specforge_and_zlab(trained, client, script, fmt):
    root = trained["root"]
    out = _export(trained, fmt)
    draft = draftsmith.load_draft(trained["draft"]).float().eval()
    inputs = root / f"{client}-{fmt}-inputs.safetensors"
    ours = _one_block(draft, inputs)
    report = _run(client, script, out, inputs, root / f"{client}-{fmt}-report.json")
    assert report["missing"] == [] and report["unexpected"] == [] and report["warnings"] == [], report
    assert report.get("mismatched", []) == []
    assert report["layer_ids"] == list(draft.config.target_layer_ids)  # SpecForge and z-lab read out(k) as is
    if client == "specforge":
        assert report["layer_types"] == ["full_attention"] * 2
        assert (report["block_size"], report["mask_token_id"]) == (BLOCK, MASK)
    torch.testing.assert_close(torch.tensor(report["hidden"]), ours, rtol=1e-4, atol=1e-4)


# -- z-lab's own save_pretrained → draftsmith ---------------------------------------------------------------------
ZLAB_BASE = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 256,
             "rms_norm_eps": 1e-6, "pad_token_id": 0, "eos_token_id": 2, "bos_token_id": 1,
             "tie_word_embeddings": False, "block_size": BLOCK, "num_target_layers": 8,
             "architectures": ["DFlashDraftModel"], "auto_map": {"AutoModel": "dflash.DFlashDraftModel"}}
ZLAB_VARIANTS = {
    # a public z-lab checkpoint: bidirectional full attention, ids in dflash_config
    "full": {"dflash_config": {"mask_token_id": MASK, "target_layer_ids": [1, 5]}},
    # sliding layers, no is_causal: z-lab runs them causally (window 6 < context 10: the window bites)
    "sliding": {"dflash_config": {"mask_token_id": MASK, "target_layer_ids": [2, 4]}, "use_sliding_window": True,
                "sliding_window": 6, "max_window_layers": 0,
                "layer_types": ["sliding_attention", "sliding_attention"]},
    # no target_layer_ids: z-lab's build_target_layer_ids(8, 2) = [1, 5]
    "default_ids": {"dflash_config": {"mask_token_id": MASK}},
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(ZLAB_VARIANTS))
def test_zlab_saved_checkpoint_reads_back_and_matches_zlab(tmp_path, variant):
    config = {**ZLAB_BASE, **ZLAB_VARIANTS[variant]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(0)
    ctx, ids = 10, config["dflash_config"].get("target_layer_ids", [1, 5])
    noise, context = torch.randn(1, BLOCK, 32, generator=g), torch.randn(1, ctx, len(ids) * 32, generator=g)
    save_file({"noise": noise, "context": context, "positions": torch.arange(ctx + BLOCK)[None]},
              str(tmp_path / "inputs.safetensors"))
    saved = tmp_path / "zlab-saved"
    report = _run("zlab", "zlab_save.py", tmp_path / "config.json", tmp_path / "inputs.safetensors",
                  tmp_path / "zlab-report.json", saved)
    assert "draftsmith" not in json.loads((saved / "config.json").read_text())  # a foreign checkpoint
    draft = draftsmith.load_draft(saved)
    assert draft.config.draftsmith["read_from"] == "zlab"
    assert draft.config.target_layer_ids == report["layer_ids"] == ids
    assert (draft.block_size, draft.mask_token_id) == (report["block_size"], report["mask_token_id"])
    assert draft.config.causal is report["is_causal"] and draft.config.draft_sliding_window == report["sliding_window"]
    mask = draft.block_layout(torch.tensor([[ctx]]), ctx).dense_mask()
    with torch.no_grad():
        ours = draft(noise, torch.arange(ctx, ctx + BLOCK)[None], context, torch.arange(ctx)[None], mask)[0]
    torch.testing.assert_close(ours, torch.tensor(report["hidden"]), rtol=1e-4, atol=1e-4)
