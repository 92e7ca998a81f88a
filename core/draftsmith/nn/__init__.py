"""Shared torch building blocks for draft models (imported only by model code, never by the CLI).

* :mod:`draftsmith.nn.norm` — RMSNorm (HF-equivalent numerics).
* :mod:`draftsmith.nn.rotary` — rotary embedding built with transformers' ``ROPE_INIT_FUNCTIONS`` (default,
  linear, dynamic, llama3, YaRN, longrope), ``inv_freq`` pinned to fp32 across dtype casts.
* :mod:`draftsmith.nn.block_attention` — block-diffusion masks and KV-injection attention (DFlash, DSpark).
"""
