"""EAGLE-1/2 draft: autoregression at the feature level (Li et al., 2024).

The draft predicts the target's next *feature*: ``f̂_{t+1} = draft(x_{t+1}, f_t)``, where ``f_t`` is the target's
final hidden state at position ``t`` **after** the final norm — exactly the ``lm_head`` input (draftsmith's
``TargetFeatures.final_hidden``), so the target's own ``lm_head`` turns a predicted feature into next-token logits
without another norm. Training (objective.py) and drafting (drafting.py) both use this post-norm feature.

Architecture: ``fc(concat(embed(x_{t+1}), f_t))`` (2H -> H, embedding first) -> ``draft_num_hidden_layers`` causal
Llama layers -> final RMSNorm (the output is compared with a post-norm target feature). There is no ``lm_head``:
logits come from the frozen target ``lm_head`` bound with :meth:`bind_lm_head` (never registered, so it is neither
trained, nor saved, nor seen by DDP).

Saved layout (draftsmith's own, identical to NeMo AutoModel's ``LlamaEagleDraftModel``): ``embed_tokens.weight``,
``fc.weight`` (+ ``fc.bias`` with ``fc_bias``), ``layers.{i}.{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}.weight``, ``norm.weight``. Differences from the original EAGLE
head (yuhuili, served by SGLang ``LlamaForCausalLMEagle`` / vLLM ``EagleLlamaForCausalLM``): layer 0 keeps its
``input_layernorm`` and there is a final ``norm``; those engines' EAGLE-1 loaders skip both, so serve this head
with draftsmith's own decoder (see docs/methods/eagle.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from draftsmith.checkpoint import draft_metadata
from draftsmith.conventions import check_option_names, draft_fields, text_config
from draftsmith.errors import ConfigError
from draftsmith.nn.norm import RMSNorm
from draftsmith.nn.rotary import RotaryEmbedding

from .attention import KVCache, TTTCache, _repeat_kv  # noqa: F401  (_repeat_kv re-exported: public name)
from .draft_base import EagleDraftModel, positions_for, weight_of
from .config import LlamaEagleConfig, draft_depth
from .registry import EAGLE1_DRAFT_OPTIONS
from .layers import EagleLlamaAttention, EagleLlamaDecoderLayer, EagleLlamaMLP  # noqa: F401  (public names)
from .masks import _build_causal_mask, causal_visibility  # noqa: F401  (public name)

DRAFT_CLASS = "draftsmith_eagle.draft_llama_v12:LlamaEagleDraftModel"



class LlamaEagleDraftModel(EagleDraftModel):
    config_class = LlamaEagleConfig
    config: LlamaEagleConfig
    _no_split_modules = ["EagleLlamaDecoderLayer"]

    @classmethod
    def build_draft_config(cls, target_config: Any, **options: Any) -> LlamaEagleConfig:
        """Options: ``draft_num_hidden_layers`` (default 1; alias ``num_hidden_layers``), ``fc_bias`` (False),
        ``intermediate_size`` (the target's), ``qkv_bias`` (False)."""
        check_option_names(cls.__name__, options, EAGLE1_DRAFT_OPTIONS, kind="draft")
        depth = draft_depth(options)
        options = dict(options)
        fields = draft_fields(target_config, rotary=options.pop("rotary", None) or "target")
        fields.update({k: v for k, v in options.items() if v is not None})
        config = LlamaEagleConfig(**fields, num_hidden_layers=int(depth), target_layer_ids=[])
        config.draftsmith = draft_metadata("eagle1", DRAFT_CLASS, text_config(target_config),
                                           target_layer_ids=[], feature="final_hidden (post-final-norm)")
        config.draftsmith["target_architectures"] = list(getattr(target_config, "architectures", None) or [])
        return config

    def __init__(self, config: LlamaEagleConfig) -> None:
        super().__init__(config)
        h = config.hidden_size
        pad = config.pad_token_id if config.pad_token_id is not None and 0 <= config.pad_token_id < config.vocab_size \
            else None
        self.embed_tokens = nn.Embedding(config.vocab_size, h, padding_idx=pad)
        self.fc = nn.Linear(2 * h, h, bias=config.fc_bias)
        self.layers = nn.ModuleList(EagleLlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(h, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config, config.head_dim)
        self.post_init()

    def bind_lm_head(self, lm_head: Any) -> None:
        """Hold the target's (frozen) ``lm_head`` without registering it (not trained, saved, or DDP-synced)."""
        object.__setattr__(self, "_target_lm_head", lm_head)

    def compute_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Target-vocab logits of (predicted) post-norm features through the bound target ``lm_head``."""
        head = getattr(self, "_target_lm_head", None)
        if head is None:
            raise ConfigError("LlamaEagleDraftModel has no lm_head: call bind_lm_head(target_lm_head) first "
                              "(the EAGLE-1 objective and drafters do this)")
        weight = weight_of(head).detach()
        bias = getattr(head, "bias", None)
        return F.linear(features, weight.to(features.dtype), None if bias is None else bias.detach())

    def forward(self, input_ids: torch.Tensor, target_hidden_states: torch.Tensor,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache: KVCache | TTTCache | None = None) -> torch.Tensor:
        """Predicted next features ``(B, T, H)`` (post-norm) for slots pairing ``input_ids[t]`` (the token *after*
        the feature's position) with ``target_hidden_states[t]``.

        ``attention_mask``: ``(B, T)`` padding mask (causal + padding + packed documents from ``position_ids``) or
        a prebuilt ``(B|1, 1, T, Tk)`` visibility. ``cache``: a :class:`KVCache` for incremental drafting (new slots
        appended after the cached ones, seeing all of them unless a 4-D mask says otherwise), or a
        :class:`TTTCache` to unroll chains for every slot at once (step ``s`` = rotary shifted by ``s``, step-0 keys
        causal + the chain's own diagonal; used by ``Eagle1Objective.acceptance_lengths``).
        """
        b, t = input_ids.shape
        unroll = isinstance(cache, TTTCache)
        offset = cache.step if unroll else (len(cache) if cache is not None else 0)
        if position_ids is None:
            positions = positions_for(b, t, offset, None, input_ids.device)
        else:
            positions = position_ids + offset if unroll else position_ids
        if attention_mask is not None and attention_mask.dim() == 2:
            attention_mask = None if isinstance(cache, KVCache) else causal_visibility(attention_mask, position_ids)
        embeds = self.embed_tokens(input_ids)  # (B, T, H)
        hidden = self.fc(torch.cat([embeds, target_hidden_states.to(embeds.dtype)], dim=-1))  # (B, T, H)
        rotary = self.rotary_emb(hidden, positions)  # (cos, sin) each (B, T, D)
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden, rotary, attention_mask, cache.layer(i) if cache is not None else None)
        if unroll:
            cache.step += 1
        return self.norm(hidden)  # (B, T, H)

    def new_ttt_cache(self) -> TTTCache:
        return TTTCache(len(self.layers))

    def new_cache(self) -> KVCache:
        return KVCache(len(self.layers))
