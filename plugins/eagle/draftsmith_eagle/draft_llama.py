"""EAGLE-3 draft (Li et al., 2025): fused low/mid/high target features, one fused decoder layer, reduced vocab.

Slot ``t`` pairs the token ``x_{t+1}`` with ``g_t = fc(concat(aux features at t))`` and predicts ``x_{t+2}``; later
draft steps feed the draft's own output hidden state instead of ``g`` (training-time test, TTT).

Module tree = the native EAGLE-3 checkpoint layout SGLang and vLLM load (``LlamaForCausalLMEagle3``), so
``save_pretrained`` needs no conversion: ``embed_tokens`` (frozen copy of the target's), ``fc`` (k·H_t -> H, no
bias), optional ``fc_norm.{i}`` (EAGLE-3.1), ``midlayer.*`` (the fused 2H-input layer), optional
``additional_layers.{i}.*`` (plain Llama layers, extra depth), ``norm``, ``lm_head`` (H -> draft vocab, trained from
scratch) and the vocab maps ``d2t`` (``target_id = draft_id + d2t[draft_id]``, int64) / ``t2d`` (bool over the
target vocab) when the draft vocab is smaller than the target's.

Main difference with NeMo AutoModel's ``LlamaEagle3DraftModel``: no ``model.`` prefix (the native layout), attention
through fused SDPA (attention.py) for training, TTT and drafting alike, ``num_hidden_layers`` = the draft's depth.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from draftsmith.checkpoint import draft_metadata
from draftsmith.conventions import check_option_names, draft_fields, text_config, validate_layer_ids
from draftsmith.errors import ConfigError
from draftsmith.nn.norm import RMSNorm
from draftsmith.nn.rotary import RotaryEmbedding

from .attention import KVCache, TTTCache
from .draft_base import EagleDraftModel, positions_for
from .config import LlamaEagle3Config, draft_depth
from .layers import Eagle3FusedDecoderLayer, EagleLlamaDecoderLayer
from .masks import causal_visibility

DRAFT_CLASS = "draftsmith_eagle.draft_llama:LlamaEagle3DraftModel"
DEFAULT_DRAFT_VOCAB = 32000  # the EAGLE-3 release / SpecForge / NeMo default



def build_eagle3_config(cls: type, draft_class: str, target_config: Any, options: dict[str, Any]
                        ) -> LlamaEagle3Config:
    """The EAGLE-3 draft config for ``target_config`` (shared by the dense and gpt-oss drafts)."""
    from .registry import EAGLE3_DRAFT_OPTIONS, default_aux_layer_ids

    check_option_names(cls.__name__, options, EAGLE3_DRAFT_OPTIONS, kind="draft")
    text = text_config(target_config)
    n_target = int(text.num_hidden_layers)
    ids = options.pop("target_layer_ids", None)
    alias = options.pop("aux_layer_ids", None)
    ids = ids if ids is not None else alias
    k = options.pop("num_aux_layers", None)
    if ids is None:
        ids = default_aux_layer_ids(n_target, num_aux_layers=None if k is None else int(k))
    ids = validate_layer_ids(ids, n_target)
    if k is not None and int(k) != len(ids):
        raise ConfigError(f"num_aux_layers={k} but {len(ids)} target_layer_ids were given: {ids}")
    depth = draft_depth(options)
    fields = draft_fields(target_config, rotary=options.pop("rotary", None) or "target")
    vocab = options.pop("draft_vocab_size", None)
    vocab = min(DEFAULT_DRAFT_VOCAB, fields["vocab_size"]) if vocab is None else int(vocab)
    fields.update({name: value for name, value in options.items() if value is not None})
    config = LlamaEagle3Config(
        **fields, num_hidden_layers=int(depth), draft_vocab_size=vocab, target_hidden_size=fields["hidden_size"],
        num_aux_hidden_states=len(ids), target_layer_ids=ids,
        # native convention = output-of-layer ids (SGLang's); export_vllm rewrites them +1 (see export.py)
        eagle_config={"eagle_aux_hidden_state_layer_ids": ids, "use_aux_hidden_state": True},
    )
    config.draftsmith = draft_metadata("eagle3", draft_class, text, target_layer_ids=ids)
    config.draftsmith["target_architectures"] = list(getattr(target_config, "architectures", None) or [])
    return config


class LlamaEagle3DraftModel(EagleDraftModel):
    config_class = LlamaEagle3Config
    config: LlamaEagle3Config
    _no_split_modules = ["Eagle3FusedDecoderLayer", "EagleLlamaDecoderLayer"]

    @classmethod
    def build_draft_config(cls, target_config: Any, **options: Any) -> LlamaEagle3Config:
        """Options: ``target_layer_ids`` (alias ``aux_layer_ids``; default: the EAGLE-3 layer policy in
        registry.py), ``num_aux_layers`` (3), ``draft_vocab_size`` (min(32000, target vocab)), ``num_hidden_layers``
        (draft depth, 1), ``fc_norm`` / ``norm_output`` (EAGLE-3.1, off), ``intermediate_size`` (the target's)."""
        return build_eagle3_config(cls, DRAFT_CLASS, target_config, dict(options))

    def __init__(self, config: LlamaEagle3Config) -> None:
        super().__init__(config)
        h, ht, eps = config.hidden_size, config.target_hidden_size, config.rms_norm_eps
        pad = config.pad_token_id if config.pad_token_id is not None and 0 <= config.pad_token_id < config.vocab_size \
            else None
        self.embed_tokens = nn.Embedding(config.vocab_size, h, padding_idx=pad)
        self.fc = nn.Linear(config.num_aux_hidden_states * ht, h, bias=False)
        if config.fc_norm:
            self.fc_norm = nn.ModuleList(RMSNorm(ht, eps=eps) for _ in range(config.num_aux_hidden_states))
        self.midlayer = Eagle3FusedDecoderLayer(config, 0)
        if config.num_hidden_layers > 1:
            self.additional_layers = nn.ModuleList(
                EagleLlamaDecoderLayer(config, i) for i in range(1, config.num_hidden_layers))
        self.norm = RMSNorm(h, eps=eps)
        self.lm_head = nn.Linear(h, config.draft_vocab_size, bias=False)
        if config.draft_vocab_size < config.vocab_size:
            # identity placeholder (first draft_vocab_size ids) until set_vocab_mapping(selected_ids)
            self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
            self.register_buffer("t2d", torch.arange(config.vocab_size) < config.draft_vocab_size)
        self.rotary_emb = self.build_rotary(config)
        self.post_init()

    def build_rotary(self, config: LlamaEagle3Config) -> nn.Module:
        """The draft's rotary (the target's rope type and parameters, via transformers' rope init functions)."""
        return RotaryEmbedding(config, config.head_dim)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> "LlamaEagle3DraftModel":
        model = super().from_pretrained(*args, **kwargs)
        model.check_vocab_mapping()  # a missing or corrupted d2t/t2d must fail loudly, not collapse acceptance
        return model

    @property
    def compresses_vocab(self) -> bool:
        return self.config.draft_vocab_size < self.config.vocab_size

    # --- draft vocabulary --------------------------------------------------------------------------------------
    def set_vocab_mapping(self, selected_ids: torch.Tensor) -> None:
        """Map draft ids to target ids: ``selected_ids[i]`` is the target id of draft id ``i`` (frequency order,
        not sorted). Sets ``d2t[i] = selected_ids[i] - i`` (vLLM's offset form) and ``t2d[selected_ids] = True``
        (SGLang's mask). Without compression only the identity mapping is valid (there are no buffers)."""
        ids = torch.as_tensor(selected_ids, dtype=torch.long).flatten().cpu()
        vd, v = self.config.draft_vocab_size, self.config.vocab_size
        if ids.numel() != vd:
            raise ConfigError(f"set_vocab_mapping: got {ids.numel()} ids for a draft vocab of {vd}")
        if int(ids.min()) < 0 or int(ids.max()) >= v:
            raise ConfigError(f"set_vocab_mapping: ids must lie in [0, {v}), got range [{int(ids.min())}, "
                              f"{int(ids.max())}]")
        if torch.unique(ids).numel() != vd:
            raise ConfigError("set_vocab_mapping: selected ids must be distinct")
        if not self.compresses_vocab:
            if not torch.equal(ids, torch.arange(v)):
                raise ConfigError("set_vocab_mapping: draft_vocab_size == vocab_size keeps the identity mapping "
                                  "(an uncompressed head has no d2t/t2d to store a permutation)")
            return
        with torch.no_grad():
            self.d2t.copy_(ids.to(self.d2t.device) - torch.arange(vd, device=self.d2t.device))
            self.t2d.zero_()
            self.t2d[ids.to(self.t2d.device)] = True
        self.check_vocab_mapping()

    def selected_token_ids(self) -> torch.Tensor:
        """``(draft_vocab,)`` target id of every draft id."""
        arange = torch.arange(self.config.draft_vocab_size, device=self.lm_head.weight.device)
        return arange + self.d2t.to(arange.device) if self.compresses_vocab else arange

    def check_vocab_mapping(self) -> None:
        """``nonzero(t2d) == sorted(d2t + arange)`` (SpecForge's consistency rule); raises otherwise."""
        if not self.compresses_vocab:
            return
        targets = (self.d2t + torch.arange(self.d2t.numel(), device=self.d2t.device)).sort().values
        if self.t2d.dtype != torch.bool or not torch.equal(self.t2d.nonzero().flatten(), targets):
            raise ConfigError("inconsistent draft vocab mapping: nonzero(t2d) != sorted(d2t + arange)")

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids] if self.compresses_vocab else draft_ids

    # --- forward pieces ------------------------------------------------------------------------------------
    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)  # (B, T, H)

    def project_hidden_states(self, aux_hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, T, k·H_t)`` concatenated target features -> ``(B, T, H)``; EAGLE-3.1 ``fc_norm`` normalises each
        of the k chunks first."""
        if self.config.fc_norm:
            chunks = aux_hidden_states.split(self.config.target_hidden_size, dim=-1)
            aux_hidden_states = torch.cat([norm(c) for norm, c in zip(self.fc_norm, chunks)], dim=-1)
        return self.fc(aux_hidden_states.to(self.fc.weight.dtype))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft-vocab logits; ``hidden`` is already normalised when ``norm_output`` (EAGLE-3.1)."""
        return self.lm_head(hidden if self.config.norm_output else self.norm(hidden))  # (B, T, Vd)

    def new_ttt_cache(self) -> TTTCache:
        return TTTCache(self.config.num_hidden_layers)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.num_hidden_layers)

    def forward(self, input_ids: torch.Tensor | None = None, projected_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache_hidden: TTTCache | KVCache | None = None, inputs_embeds: torch.Tensor | None = None,
                slots: torch.Tensor | None = None) -> torch.Tensor:
        """One draft step -> hidden ``(B, T, H)`` (post-norm when ``norm_output``; the next TTT step consumes it).

        ``cache_hidden``: a :class:`TTTCache` for the training unroll (step ``s`` shifts rotary positions by ``s``
        and attends step-0 keys causally plus its own diagonal), a :class:`KVCache` for incremental drafting
        (slots appended after the cached ones), or None (one plain causal step). ``attention_mask``: ``(B, T)``
        padding mask or a prebuilt ``(B|1, 1, T, Tk)`` boolean visibility.

        ``slots`` (TTT steps after the first only): ``(B, L)`` distinct sequence positions, per row, of the chains
        still worth computing; the others' outputs are returned as zeros (the objective drops chains with no
        supervised prediction left — equal results, less work).
        """
        embeds = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)  # (B, T, H)
        hidden = projected_hidden_states.to(embeds.dtype)  # (B, T, H)
        b, t, _ = embeds.shape
        if isinstance(cache_hidden, KVCache):
            offset = len(cache_hidden)  # absolute position of the first new slot
            if attention_mask is not None and attention_mask.dim() == 2:
                attention_mask = None  # incremental drafting: batch 1, no padding
        else:
            offset = cache_hidden.step if cache_hidden is not None else 0  # TTT: rotary shifted by the step
            if attention_mask is not None and attention_mask.dim() == 2:
                attention_mask = causal_visibility(attention_mask, position_ids, allow_none=slots is None)
        if position_ids is None:
            positions = positions_for(b, t, offset, None, embeds.device)
        else:
            positions = position_ids + (offset if not isinstance(cache_hidden, KVCache) else 0)
        if slots is not None:
            if not isinstance(cache_hidden, TTTCache) or cache_hidden.step == 0:
                raise ValueError("slots select chains of a TTT unroll after its first step")
            embeds, hidden, positions, attention_mask = _select_slots(slots, embeds, hidden, positions,
                                                                      attention_mask)
            cache_hidden.slots = slots
        rotary = self.rotary_emb(hidden, positions)  # (cos, sin) each (B, L, D)
        layer0 = cache_hidden.layer(0) if cache_hidden is not None else None
        hidden = self.midlayer(embeds, hidden, rotary, attention_mask, layer0)  # (B, L, H)
        for i, layer in enumerate(getattr(self, "additional_layers", ()), start=1):
            hidden = layer(hidden, rotary, attention_mask, cache_hidden.layer(i) if cache_hidden is not None else None)
        if isinstance(cache_hidden, TTTCache):
            cache_hidden.step += 1
            cache_hidden.slots = None
        if slots is not None:
            hidden = hidden.new_zeros(b, t, hidden.shape[-1]).scatter(1, slots[..., None].expand_as(hidden), hidden)
        return self.norm(hidden) if self.config.norm_output else hidden


def _select_slots(slots: torch.Tensor, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
                  visibility: torch.Tensor | None):
    """Rows ``slots (B, L)`` of the per-position inputs, and their ``(B, 1, L, T)`` visibility of step-0 keys."""
    rows = slots[..., None]
    length = embeds.shape[1]
    embeds = embeds.gather(1, rows.expand(-1, -1, embeds.shape[-1]))  # (B, L, H)
    hidden = hidden.gather(1, rows.expand(-1, -1, hidden.shape[-1]))  # (B, L, H)
    positions = positions.gather(1, slots)  # (B, L)
    if visibility is None:  # causal: the chain of slot t sees the step-0 keys 0..t
        visibility = (torch.arange(length, device=slots.device) <= rows)[:, None]  # (B, 1, L, T)
    else:
        visibility = visibility.expand(slots.shape[0], -1, -1, -1).gather(
            2, slots[:, None, :, None].expand(-1, visibility.shape[1], -1, length))  # (B, 1, L, T)
    return embeds, hidden, positions, visibility
