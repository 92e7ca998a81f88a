"""NeMo AutoModel's own training steps (the real package, ``nemo_automodel`` 0.7.0) at the reference shapes, for
``benchmarks/train_step.py --vs nemo``.

Each builder takes draftsmith's draft, objective, batch and target features (built by ``train_step.build`` /
``make_batch``) and returns a loss function running NeMo's draft module and trainer module on the same data:

* **dspark** — ``dspark.config.build_draft_config`` + ``dspark.draft_qwen3.Qwen3DSparkModel`` +
  ``dspark.core.DSparkTrainerModule`` (loss ``dspark.loss.compute_dspark_loss``);
* **dflash** — ``dflash.draft_qwen3.build_qwen3_dflash_draft_config`` + ``Qwen3DFlashDraftModel`` +
  ``dflash.core.DFlashTrainerModule`` (target ``embed_tokens`` / ``lm_head`` passed as in the recipe);
* **eagle3** — ``eagle.draft_llama.LlamaEagle3DraftModel`` (config keys as ``recipes/llm/train_eagle3.py`` sets
  them, draft attention ``eager``, the recipe default) + ``eagle.core.Eagle3TrainerModule``; the target logits
  ``lm_head(final_hidden)`` are computed inside the step and shifted left as ``eagle/target.py`` does (draftsmith's
  objective also projects them inside its step).

Same starting weights (draftsmith's draft state dict loaded into NeMo's, names mapped where they differ), same
anchors (NeMo's anchor sampler is replaced by draftsmith's draw for the step: both time the same blocks).
Attention backend: NeMo's block drafters train with ``flex_attention``, which has no CPU backward in torch 2.13
(``NotImplementedError: FlexAttention does not support backward on CPU``), so on CPU the dense-mask ``sdpa`` path
is used (NeMo's own non-flex path; ``eager`` is slower there); on CUDA the default ``flex_attention``.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable

import torch


def available() -> str | None:
    """The installed ``nemo_automodel`` version, or None when the package is not importable."""
    if importlib.util.find_spec("nemo_automodel") is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nemo-automodel")
    except PackageNotFoundError:
        return "unknown"


class _Args(dict):
    """The recipe's ``model_args`` (attribute access + ``in``), as NeMo's config builders read it."""

    __getattr__ = dict.__getitem__


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto NeMo's {type(module).__name__}: missing {missing}, "
                           f"unexpected {unexpected}")


def _target_config(target: dict[str, Any]):
    from transformers import Qwen3Config

    config = Qwen3Config(**target)
    config.architectures = ["Qwen3ForCausalLM"]
    return config


def _draw(objective, batch, candidates=None):
    """draftsmith's anchor draw of call 0 (what ``objective(batch, ...)`` draws after ``load_run_state``)."""
    objective.load_run_state({"calls": 0})
    mask = batch["loss_mask"].bool() & batch["attention_mask"].bool()
    anchors, keep = objective.draw_anchors(mask if candidates is None else candidates(mask))
    objective.load_run_state({"calls": 0})
    return anchors, keep


def build_dspark(target, shape, draft, objective, batch, features, attention: str):
    from nemo_automodel.components.speculative.dspark import config as nemo_config
    from nemo_automodel.components.speculative.dspark import core as nemo_core
    from nemo_automodel.components.speculative.dspark import draft_qwen3 as nemo_draft

    d = shape["draft"]
    args = _Args(num_draft_layers=d["num_draft_layers"], target_layer_ids=d["target_layer_ids"],
                 confidence_head_alpha=objective.conf_alpha, confidence_head_with_markov=d["confidence_head_with_markov"],
                 markov_rank=d["markov_rank"], markov_head_type=d["markov_head_type"], block_size=d["block_size"],
                 mask_token_id=d["mask_token_id"], num_anchors=objective.num_anchors)
    config = nemo_config.build_draft_config(_target_config(target), args)
    config._attn_implementation = attention
    model = nemo_draft.Qwen3DSparkModel(config).to(batch["input_ids"].device)
    _load(model, draft.state_dict())
    model.set_embedding_head_trainable(False)
    model.train()
    trainer = nemo_core.DSparkTrainerModule(model, loss_decay_gamma=objective.loss_decay_gamma,
                                            ce_loss_alpha=objective.ce_alpha, l1_loss_alpha=objective.l1_alpha,
                                            confidence_head_alpha=objective.conf_alpha)
    anchors, keep = _draw(objective, batch)
    # NeMo's draft samples its anchors inside forward (torch.rand): hand it draftsmith's draw instead
    nemo_draft.sample_anchor_positions = lambda **_: (anchors.clone(), keep.clone())
    context = features.stacked(d["target_layer_ids"])

    def loss():
        return trainer(batch["input_ids"], context, batch["loss_mask"], features.final_hidden).loss
    return loss, model


def build_dflash(target, shape, draft, objective, batch, features, attention: str):
    from draftsmith_dflash.anchors import anchor_candidates
    from nemo_automodel.components.speculative.dflash import core as nemo_core
    from nemo_automodel.components.speculative.dflash import draft_qwen3 as nemo_draft

    d = shape["draft"]
    config = nemo_draft.build_qwen3_dflash_draft_config(
        _target_config(target), num_draft_layers=d["num_draft_layers"], num_target_layers=target["num_hidden_layers"],
        block_size=d["block_size"], attention_backend=attention,
        dflash_config={"mask_token_id": d["mask_token_id"], "target_layer_ids": d["target_layer_ids"]})
    model = nemo_draft.Qwen3DFlashDraftModel(config).to(batch["input_ids"].device)
    _load(model, draft.state_dict())
    model.train()
    heads = objective.heads
    trainer = nemo_core.DFlashTrainerModule(model, heads.lm_head, heads.embed_tokens, d["mask_token_id"],
                                            block_size=d["block_size"], attention_backend=attention,
                                            num_anchors=objective.num_anchors,
                                            loss_decay_gamma=shape["objective"]["loss_decay_gamma"])
    trainer.to(batch["input_ids"].device)  # its block-offset buffer is built on the CPU
    anchors, keep = _draw(objective, batch, lambda m: anchor_candidates(m, d["block_size"]))
    trainer._sample_anchor_positions = lambda *a, **k: (anchors.clone(), keep.clone())
    context = features.stacked(d["target_layer_ids"])

    def loss():
        return trainer(batch["input_ids"], context, batch["loss_mask"]).loss
    return loss, model


def build_eagle3(target, shape, draft, objective, batch, features, attention: str):
    from nemo_automodel.components.speculative.eagle import core as nemo_core
    from nemo_automodel.components.speculative.eagle import draft_llama as nemo_draft

    from transformers import Qwen3Config

    config = _target_config(target).to_dict()
    config.update(draft_vocab_size=int(draft.config.draft_vocab_size), target_hidden_size=target["hidden_size"],
                  architectures=["LlamaEagle3DraftModel"], tie_word_embeddings=False, attn_implementation="eager",
                  fc_norm=False, norm_output=False, parallel_drafting=False)
    model = nemo_draft.LlamaEagle3DraftModel(Qwen3Config.from_dict(config)).to(batch["input_ids"].device)
    state = {}
    for name, tensor in draft.state_dict().items():
        if name in ("d2t", "t2d", "lm_head.weight"):
            state[name] = tensor
        else:
            state["model." + name.replace("midlayer.", "layers.0.")] = tensor
    _load(model, state)
    model.freeze_embeddings()
    model.train()
    selected = draft.selected_token_ids()
    mask = draft.t2d if draft.compresses_vocab else torch.ones(target["vocab_size"], dtype=torch.bool)
    trainer = nemo_core.Eagle3TrainerModule(model, selected_token_ids=selected, selected_token_mask=mask,
                                            ttt_steps=int(objective.ttt_steps))
    layer_ids = draft.config.target_layer_ids
    aux = torch.cat([features.hidden_states[i] for i in layer_ids], dim=-1)
    lm_head = objective.heads.lm_head

    def shift(x):  # eagle/target.py: _shift_left_with_zero on logits, input ids, loss mask
        return torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)

    def loss():
        with torch.no_grad():
            logits = shift(lm_head(features.final_hidden))
        return trainer(shift(batch["input_ids"]), batch["attention_mask"], shift(batch["loss_mask"]), aux,
                       target_logits=logits).loss
    return loss, model


BUILDERS: dict[str, Callable] = {"dspark": build_dspark, "dflash": build_dflash, "eagle3": build_eagle3}
