"""Tiny configs of the target families transformers ships, for :func:`draftsmith.testing.tiny_target_config`.

Per architecture: the transformers config class and the fields a tiny instance needs beyond the shared tiny
sizes (vocab 128, hidden 64, 4 heads / 2 KV heads, 4 layers). Each entry keeps what makes the family hard for a
draft framework — MoE routing, MLA (DeepSeek), sliding + global layers, soft-capping and embedding scale (Gemma),
attention sinks and YaRN (gpt-oss), linear-attention layers with recurrent state (Qwen3-Next / Qwen3.5) — and
shrinks everything else (per-layer embeddings, expert counts, LoRA ranks) so a forward takes milliseconds.
Torch-free: a table only.
"""

from __future__ import annotations

from typing import Any

_HYBRID_LAYERS = ["linear_attention", "linear_attention", "linear_attention", "full_attention"]
_SLIDING_LAYERS = ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]
_LINEAR_ATTENTION = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                         linear_value_head_dim=16, linear_conv_kernel_dim=4)

# architecture -> (transformers config class, fields over the tiny sizes); layer_types assume 4 layers
TINY_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "MixtralForCausalLM": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=None)),
    "Qwen2MoeForCausalLM": ("Qwen2MoeConfig", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                                   shared_expert_intermediate_size=64)),
    "Qwen3NextForCausalLM": ("Qwen3NextConfig", dict(head_dim=16, num_experts=4, num_experts_per_tok=2,
                                                     moe_intermediate_size=32, shared_expert_intermediate_size=32,
                                                     layer_types=_HYBRID_LAYERS, **_LINEAR_ATTENTION)),
    "Qwen3_5ForCausalLM": ("Qwen3_5TextConfig", dict(head_dim=16, layer_types=_HYBRID_LAYERS, **_LINEAR_ATTENTION)),
    "Gemma2ForCausalLM": ("Gemma2Config", dict(head_dim=16, sliding_window=16, query_pre_attn_scalar=16)),
    "Gemma3ForCausalLM": ("Gemma3TextConfig", dict(head_dim=16, sliding_window=16, query_pre_attn_scalar=16,
                                                   layer_types=_SLIDING_LAYERS)),
    "Gemma4ForCausalLM": ("Gemma4TextConfig", dict(head_dim=16, sliding_window=16, layer_types=_SLIDING_LAYERS,
                                                   vocab_size_per_layer_input=128, hidden_size_per_layer_input=16,
                                                   global_head_dim=32, final_logit_softcapping=30.0)),
    "DeepseekV3ForCausalLM": ("DeepseekV3Config", dict(num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=16,
                                                       qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
                                                       n_routed_experts=4, num_experts_per_tok=2,
                                                       moe_intermediate_size=32, first_k_dense_replace=1, n_group=1,
                                                       topk_group=1, n_shared_experts=1)),
    "DeepseekV4ForCausalLM": ("DeepseekV4Config", dict(head_dim=16, q_lora_rank=32, o_lora_rank=32,
                                                       n_routed_experts=4, num_experts_per_tok=2,
                                                       moe_intermediate_size=32, sliding_window=16,
                                                       index_head_dim=16, index_topk=8)),
    "Glm4MoeForCausalLM": ("Glm4MoeConfig", dict(head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
                                                 moe_intermediate_size=32, first_k_dense_replace=1, n_group=1,
                                                 topk_group=1, n_shared_experts=1)),
    "Olmo2ForCausalLM": ("Olmo2Config", {}),
    "Olmo3ForCausalLM": ("Olmo3Config", dict(sliding_window=16)),
    # Granite 3's multipliers (embedding ×12, logits ÷8, residual ×0.22, attention scale 1/head_dim), not 1.0:
    # the teacher must divide by logits_scaling as the target does
    "GraniteForCausalLM": ("GraniteConfig", dict(embedding_multiplier=12.0, logits_scaling=8.0,
                                                 residual_multiplier=0.22, attention_multiplier=1 / 16)),
    "SmolLM3ForCausalLM": ("SmolLM3Config", {}),
    "Ernie4_5ForCausalLM": ("Ernie4_5Config", dict(head_dim=16)),
    "HunYuanDenseV1ForCausalLM": ("HunYuanDenseV1Config", dict(head_dim=16)),
    "MiniMaxM2ForCausalLM": ("MiniMaxM2Config", dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2)),
}
# Every family gets the same special ids (inside the tiny vocab; several configs default to ids of a big vocab).
SPECIAL_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
