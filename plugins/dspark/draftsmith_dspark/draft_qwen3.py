"""``Qwen3DSparkModel``: the DSpark draft for Qwen3-shaped targets (NeMo AutoModel ``dspark/draft_qwen3.py``).

Main difference with the DFlash draft (same :mod:`draftsmith.nn.block_backbone` backbone: ``fc`` +
``hidden_norm`` context fusion, KV injection, non-causal in-block attention):

* **sample-from-anchor** — the block is ``[x_a, MASK × (γ−1)]`` and slot k predicts ``x_{a+k+1}``, so all γ
  slots are drafts (DFlash feeds γ+1 slots and drops slot 0);
* the draft **owns frozen copies** of the target ``embed_tokens`` / ``lm_head`` (saved in the checkpoint);
* a **Markov head** adds a previous-token logit bias (exact softmax) and a **confidence head** predicts per
  slot acceptance.

Tensor names: ``embed_tokens.weight``, ``lm_head.weight``, ``layers.{i}.*``, ``fc.weight``, ``hidden_norm.weight``,
``norm.weight``, ``markov_head.{markov_w1,markov_w2}.weight`` (+ ``gate_proj`` / ``joint_proj``),
``confidence_head.proj.{weight,bias}``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from draftsmith.checkpoint import draft_metadata
from draftsmith.errors import ConfigError
from draftsmith.nn.block_backbone import BlockBackboneMixin
from draftsmith.nn.block_mask import BlockLayout, block_position_ids
from draftsmith.nn.documents import packed_document_ids
from draftsmith.nn.weights import copy_full_tensor

from .anchors import DSparkForwardOutput, DSparkHiddenOutput, align_blocks, gather_positions
from .config import Qwen3DSparkConfig, build_dspark_config
from .confidence_head import ConfidenceHead
from .markov_head import build_markov_head

DRAFT_CLASS = "draftsmith_dspark.draft_qwen3:Qwen3DSparkModel"


class Qwen3DSparkModel(BlockBackboneMixin, PreTrainedModel):
    config_class = Qwen3DSparkConfig
    config: Qwen3DSparkConfig
    base_model_prefix = ""
    _no_split_modules = ["BlockDecoderLayer"]
    supports_gradient_checkpointing = False

    def __init__(self, config: Qwen3DSparkConfig) -> None:
        super().__init__(config)
        if config.mask_token_id is None or not config.target_layer_ids:
            raise ConfigError("Qwen3DSparkModel needs mask_token_id and target_layer_ids; build the config with "
                             "Qwen3DSparkModel.build_draft_config(target_config, mask_token_id=...)")
        self._init_block_backbone(config, num_context_layers=len(config.target_layer_ids))
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        rank = config.markov_rank
        self.markov_head = (build_markov_head(config.markov_head_type, config.vocab_size, config.hidden_size, rank)
                            if rank > 0 else None)
        self.confidence_head = (ConfidenceHead(config.hidden_size, rank if config.confidence_head_with_markov else 0)
                                if config.enable_confidence_head else None)
        self.post_init()
        if config.freeze_embeddings:
            self.freeze_embeddings()

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def build_draft_config(cls, target_config: Any, **options: Any) -> Qwen3DSparkConfig:
        config = build_dspark_config(target_config, **options)
        config.draftsmith = draft_metadata("dspark", DRAFT_CLASS, target_config,
                                           target_layer_ids=config.target_layer_ids,
                                           block_size=config.block_size, mask_token_id=config.mask_token_id)
        return config

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # the backbone mixin rebuilds the rotary inv_freq (fp32) on loading
        if getattr(module, "zero_init", False):  # Markov W2: a fresh head leaves the parallel logits unchanged
            init.zeros_(module.weight)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> "Qwen3DSparkModel":
        model = super().from_pretrained(*args, **kwargs)
        if model.config.freeze_embeddings:  # loading re-creates the parameters; keep the copies frozen
            model.freeze_embeddings()
        return model

    def copy_embeddings_from_target(self, embed_tokens: nn.Module, lm_head: nn.Module) -> None:
        """Copy the target's token embedding and output head into the draft (DTensor-aware: sharded target
        weights are gathered, a sharded draft receives its own shards)."""
        if getattr(lm_head, "bias", None) is not None:
            raise ConfigError("DSpark drafts copy a bias-free lm_head; this target's lm_head has a bias")
        copy_full_tensor(self.embed_tokens.weight, embed_tokens.weight)
        copy_full_tensor(self.lm_head.weight, lm_head.weight)

    def freeze_embeddings(self) -> None:
        """Freeze the copied target embedding and head (DSpark trains neither)."""
        self.embed_tokens.weight.requires_grad_(False)
        self.lm_head.weight.requires_grad_(False)

    # -- training forward --------------------------------------------------------------------------------
    def forward_hidden(self, input_ids: torch.Tensor, target_hidden_states: torch.Tensor, loss_mask: torch.Tensor,
                       target_last_hidden_states: torch.Tensor | None = None, *, anchors: torch.Tensor,
                       block_keep_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                       attention_backend: str = "sdpa") -> DSparkHiddenOutput:
        """All blocks of a batch in one pass. ``input_ids`` / ``loss_mask`` (B, S); ``target_hidden_states``
        (B, S, m·H) concatenated feature layers; ``target_last_hidden_states`` (B, S, H) post-norm (teacher);
        ``anchors`` (B, A) the blocks' anchor positions with ``block_keep_mask`` (B, A) (default: all kept) —
        drawn by the objective (:class:`~draftsmith_dspark.objective.DSparkObjective`), so the model holds no
        random state; ``position_ids`` (B, S) restarting at 0 per document when packed; ``attention_backend``
        one of :data:`draftsmith.nn.block_mask.ATTENTION_BACKENDS` (same result: "sdpa" the dense mask, the
        reference; "grouped" and "blockwise" skip masked-out work; "auto" picks by device)."""
        cfg = self.config
        bsz, seq_len = input_ids.shape
        gamma = cfg.block_size
        docs = packed_document_ids(position_ids)  # (B, S) or None for single-document rows
        if block_keep_mask is None:
            block_keep_mask = torch.ones_like(anchors, dtype=torch.bool)
        num_anchors = anchors.shape[1]
        align = align_blocks(input_ids, loss_mask, anchors, block_keep_mask, gamma, doc_ids=docs)

        # Padding columns (no kept anchor in any row) never reach the loss and see only themselves: skip them
        # in the backbone (at least one column runs, so an all-padding batch still touches every parameter)
        kept_cols = block_keep_mask.any(0).nonzero()
        run = max(int(kept_cols[-1]) + 1 if kept_cols.numel() else 0, 1)
        run_anchors, run_keep = anchors[:, :run], block_keep_mask[:, :run]

        # block input [x_a, MASK × (γ−1)]; padding blocks are all MASK
        noise_ids = torch.full((bsz, run, gamma), cfg.mask_token_id, dtype=torch.long, device=input_ids.device)
        noise_ids[..., 0] = torch.where(run_keep, input_ids.gather(1, run_anchors), noise_ids[..., 0])
        noise = self.embed_tokens(noise_ids.view(bsz, -1))  # (B, run·γ, H)
        positions = block_position_ids(run_anchors, gamma, position_ids)  # (B, run·γ): pos(a) + k
        ctx_positions = (position_ids if position_ids is not None
                         else torch.arange(seq_len, device=input_ids.device).expand(bsz, -1))  # (B, S)
        layout = BlockLayout(run_anchors, gamma, seq_len, keep=run_keep, document_ids=docs)
        hidden = self.backbone_forward(noise, positions, target_hidden_states.to(noise.dtype), ctx_positions,
                                       layout.attention_mask(attention_backend))  # (B, run·γ, H)
        hidden = hidden.view(bsz, run, gamma, -1)
        if run < num_anchors:
            hidden = torch.cat([hidden, hidden.new_zeros(bsz, num_anchors - run, gamma, hidden.shape[-1])], 1)
        # hidden: (B, A, γ, H)

        phi = conf = None
        if self.markov_head is not None:
            phi = self.markov_head.features(hidden, align.prev_ids)  # (B, A, γ, r)
        if self.confidence_head is not None:  # input [h_k ; W1[x_{k-1}]] (or h_k alone)
            prev_emb = self.markov_head.embed_prev(align.prev_ids) if self.confidence_head.uses_markov else None
            conf = self.confidence_head(hidden, prev_emb)  # (B, A, γ) fp32
        teacher = None
        if target_last_hidden_states is not None:
            teacher = gather_positions(target_last_hidden_states, align.teacher_positions)  # (B, A, γ, H)
        return DSparkHiddenOutput(hidden=hidden, markov_features=phi, confidence_pred=conf, teacher_hidden=teacher,
                                  teacher_positions=align.teacher_positions,
                                  target_ids=align.target_ids, prev_ids=align.prev_ids, eval_mask=align.eval_mask,
                                  block_keep_mask=block_keep_mask, anchors=anchors)

    def compute_logits(self, hidden: torch.Tensor, markov_features: torch.Tensor | None = None) -> torch.Tensor:
        """Markov-adjusted draft logits ``lm_head(h) + markov_w2(φ)``: (..., H), (..., r) -> (..., V)."""
        logits = self.lm_head(hidden)
        if markov_features is not None:
            logits = logits + self.markov_head.bias(markov_features).to(logits.dtype)
        return logits

    def forward(self, input_ids: torch.Tensor, target_hidden_states: torch.Tensor, loss_mask: torch.Tensor,
                target_last_hidden_states: torch.Tensor | None = None, *, anchors: torch.Tensor,
                block_keep_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                attention_backend: str = "sdpa") -> DSparkForwardOutput:
        """The reference training forward with materialised ``[B, A, γ, V]`` logits (methods.md §3.5); arguments
        as :meth:`forward_hidden`. Training uses :meth:`forward_hidden` + the fused loss instead, which never
        materialises them."""
        out = self.forward_hidden(input_ids, target_hidden_states, loss_mask, target_last_hidden_states,
                                  anchors=anchors, block_keep_mask=block_keep_mask, position_ids=position_ids,
                                  attention_backend=attention_backend)
        teacher = self.lm_head(out.teacher_hidden).detach() if out.teacher_hidden is not None else None
        return DSparkForwardOutput(draft_logits=self.compute_logits(out.hidden, out.markov_features),
                                   target_ids=out.target_ids, eval_mask=out.eval_mask,
                                   block_keep_mask=out.block_keep_mask, confidence_pred=out.confidence_pred,
                                   aligned_target_logits=teacher, anchor_positions=out.anchors)
