"""EAGLE registrations, option tables and layer policies (torch-free: imported by `draftsmith list-drafts`).

Also the names NeMo AutoModel users know, as views over draftsmith's live registry.

The option tables (name → default; ``None`` = derived from the target or the draft) are declared once, here, per
method: plugin.py hands them to the ``MethodSpec``s (core checks the user's ``draft:`` / ``method_options:`` /
drafter options against them and routes each to its component), config.py, objective.py and drafting.py take
their defaults from them. They live in this torch-free module because ``list-drafts`` imports plugin.py.
"""

from __future__ import annotations

from typing import Any

from draftsmith import DraftSpec, resolve_draft_spec
from draftsmith.conventions import MATRIX_FAMILIES
from draftsmith.formats import INPUT_OF_LAYER, FormatSpec
from draftsmith.views import DraftRegistryView

# Same-shaped (Llama-like) dense targets: one config-driven draft class serves them all.
DENSE_ARCHITECTURES = (
    "LlamaForCausalLM",
    "Phi3ForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
)

SPECS = (
    DraftSpec(method="eagle1", architectures=DENSE_ARCHITECTURES + MATRIX_FAMILIES + ("GptOssForCausalLM",),
              draft_cls="draftsmith_eagle.draft_llama_v12:LlamaEagleDraftModel",
              description="EAGLE-1/2 feature-regression draft (Llama-shaped decoder layer)"),
    DraftSpec(method="eagle3", architectures=DENSE_ARCHITECTURES + MATRIX_FAMILIES,
              draft_cls="draftsmith_eagle.draft_llama:LlamaEagle3DraftModel",
              description="EAGLE-3 draft: fused low/mid/high target features, TTT-trained"),
    DraftSpec(method="eagle3", architectures=("GptOssForCausalLM",),
              draft_cls="draftsmith_eagle.draft_gpt_oss:GptOssEagle3DraftModel",
              description="EAGLE-3 draft with the gpt-oss target's YaRN rotary"),
)

# -- checkpoint formats (writers in export.py, readers in readers.py; docs/formats.md) ---------------------------
def is_sglang_eagle3(config: dict[str, Any]) -> bool:
    """SGLang / SpecForge / SafeAILab EAGLE-3 (``LlamaForCausalLMEagle3``, ``midlayer.*``)."""
    return "LlamaForCausalLMEagle3" in (config.get("architectures") or [])


def is_vllm_eagle3(config: dict[str, Any]) -> bool:
    """vLLM's own EAGLE-3 layout (``Eagle3LlamaForCausalLM``, ``layers.{i}.*``) without speculators keys."""
    return ("Eagle3LlamaForCausalLM" in (config.get("architectures") or [])
            and "speculators_model_type" not in config)


def is_speculators_eagle3(config: dict[str, Any]) -> bool:
    return config.get("speculators_model_type") == "eagle3"


def is_nemo_eagle1(config: dict[str, Any]) -> bool:
    """NeMo AutoModel's EAGLE-1 save (``LlamaEagleDraftModel``) without draftsmith metadata."""
    return "LlamaEagleDraftModel" in (config.get("architectures") or []) and "draftsmith" not in config


_EAGLE1_ENGINE_REFUSAL = (
    "no serving engine can run this EAGLE-1 head: vLLM's and SGLang's EAGLE-1 loaders build layer 0 without "
    "input_layernorm and no final norm (they skip both tensors), which this head needs; decode it with "
    "`draftsmith eval` (native format) or train an eagle3 head, which exports to vllm, sglang and speculators")

FORMATS = (
    FormatSpec("eagle1", "native", writer="draftsmith_eagle.export:export_native", clients=("draftsmith",),
               summary="draftsmith's EAGLE-1/2 layout (NeMo AutoModel's); no serving engine reads it"),
    FormatSpec("eagle1", "nemo", reader="draftsmith_eagle.readers:read_nemo_eagle1",
               detect="draftsmith_eagle.registry:is_nemo_eagle1", clients=("NeMo AutoModel",),
               summary="read-only: NeMo AutoModel's LlamaEagleDraftModel save (the native layout without metadata)"),
    # vLLM's EagleLlamaForCausalLM (model_executor/models/llama_eagle.py) and SGLang's LlamaForCausalLMEagle
    # (srt/models/llama_eagle.py), after SafeAILab cnets.py, build layer 0 without input_layernorm and no final
    # norm and skip those tensors; our (NeMo's) EAGLE-1 head has both and an RMSNorm cannot be folded away
    *(FormatSpec("eagle1", name, clients=(client,), refusal=_EAGLE1_ENGINE_REFUSAL,
                 summary=f"refused: {client}'s EAGLE-1 loader has no layer-0 input_layernorm and no final norm")
      for name, client in (("vllm", "vLLM"), ("sglang", "SGLang"))),
    FormatSpec("eagle3", "native", writer="draftsmith_eagle.export:export_native", clients=("draftsmith",),
               summary="LlamaForCausalLMEagle3 layout with draftsmith metadata (any depth)"),
    FormatSpec("eagle3", "sglang", writer="draftsmith_eagle.export:export_sglang",
               reader="draftsmith_eagle.readers:read_sglang", detect="draftsmith_eagle.registry:is_sglang_eagle3",
               clients=("SGLang", "SpecForge", "SafeAILab EAGLE"),
               summary="LlamaForCausalLMEagle3: midlayer.*, ids out(k) in eagle_config"),
    FormatSpec("eagle3", "vllm", writer="draftsmith_eagle.export:export_vllm",
               reader="draftsmith_eagle.readers:read_vllm", detect="draftsmith_eagle.registry:is_vllm_eagle3",
               clients=("vLLM",), layer_id_convention=INPUT_OF_LAYER,
               summary="Eagle3LlamaForCausalLM: layers.{i}.*, ids in(k) in eagle_aux_hidden_state_layer_ids"),
    FormatSpec("eagle3", "speculators", writer="draftsmith_eagle.export:export_speculators",
               reader="draftsmith_eagle.readers:read_speculators",
               detect="draftsmith_eagle.registry:is_speculators_eagle3", clients=("speculators", "vLLM"),
               layer_id_convention=INPUT_OF_LAYER,
               summary="speculators eagle3 (what `vllm serve DIR` takes): transformer_layer_config, ids in(k)"),
)

# -- option tables ---------------------------------------------------------------------------------------------
# Draft options (config.py). The depth has three names (NeMo AutoModel's ``draft_num_hidden_layers``, draftsmith's
# ``num_draft_layers``): the aliases default to None and the depth to 1 when none is given.
_DEPTH_AND_WIDTH = {"num_hidden_layers": 1, "draft_num_hidden_layers": None, "num_draft_layers": None,
                    "intermediate_size": None,  # None: the target's
                    "qkv_bias": False,  # Qwen-style bias on q/k/v only
                    "rotary": "target"}  # target: the target's rotary fraction; full: rotate the whole head
EAGLE1_DRAFT_OPTIONS: dict[str, Any] = {**_DEPTH_AND_WIDTH, "fc_bias": False}
EAGLE3_DRAFT_OPTIONS: dict[str, Any] = {
    **_DEPTH_AND_WIDTH,
    "target_layer_ids": None,  # None: default_aux_layer_ids below
    "aux_layer_ids": None,  # alias of target_layer_ids
    "num_aux_layers": 3,  # how many layers the policy picks when no ids are given (checked against given ids)
    "draft_vocab_size": None,  # None: min(32000, target vocab)
    "fc_norm": False, "norm_output": False,  # EAGLE-3.1 switches
}
DRAFT_OPTIONS: dict[str, dict[str, Any]] = {"eagle1": EAGLE1_DRAFT_OPTIONS, "eagle2": EAGLE1_DRAFT_OPTIONS,
                                            "eagle3": EAGLE3_DRAFT_OPTIONS}

# Objective options (objective.py; the ``method_options:`` section).
EAGLE1_OBJECTIVE_OPTIONS: dict[str, Any] = {
    "hidden_loss_weight": 1.0, "token_loss_weight": 0.1,
    "feature_noise": 0.1,  # half-width of the U(-a, a) training noise on the input features
    "seed": 0,  # of the feature-noise stream
    "freeze_embeddings": True, "num_draft_tokens": 7,
}
EAGLE3_OBJECTIVE_OPTIONS: dict[str, Any] = {
    "ttt_steps": 7, "ttt_decay": 0.8,
    "num_aux_layers": None, "draft_vocab_size": None,  # None: the draft's (a given value is checked against it)
    "freeze_embeddings": True,
    "num_draft_tokens": None,  # None: ttt_steps
    "logits_chunk_size": 256, "skip_dead_chains": True,
}
OBJECTIVE_OPTIONS: dict[str, dict[str, Any]] = {"eagle1": EAGLE1_OBJECTIVE_OPTIONS,
                                                "eagle2": EAGLE1_OBJECTIVE_OPTIONS,
                                                "eagle3": EAGLE3_OBJECTIVE_OPTIONS}

# Drafter options (drafting.py; ``draftsmith eval --drafter-option`` / ``--tree``).
CHAIN_DRAFTER_OPTIONS: dict[str, Any] = {}
TREE_DRAFTER_OPTIONS: dict[str, Any] = {"top_k": 4, "max_depth": 6}
DRAFTER_OPTIONS: dict[str, dict[str, Any]] = {"eagle1": CHAIN_DRAFTER_OPTIONS, "eagle2": TREE_DRAFTER_OPTIONS,
                                              "eagle3": CHAIN_DRAFTER_OPTIONS}

# -- NeMo AutoModel names ----------------------------------------------------------------------------------------
EAGLE1_DRAFT_REGISTRY = DraftRegistryView("eagle1")
EAGLE3_DRAFT_REGISTRY = DraftRegistryView("eagle3")


def resolve_eagle1_draft_spec(architectures):
    """The EAGLE-1/2 draft spec for a target's ``config.architectures`` (first match wins)."""
    return resolve_draft_spec("eagle1", architectures)


def resolve_eagle3_draft_spec(architectures):
    """The EAGLE-3 draft spec for a target's ``config.architectures`` (first match wins)."""
    return resolve_draft_spec("eagle3", architectures)


# -- layer policies ----------------------------------------------------------------------------------------------
def default_aux_layer_ids(num_target_layers: int, num_aux_layers: int | None = None, **_options) -> list[int]:
    """EAGLE-3 default captured layers (output-of-layer ids).

    Three layers: ``[1, N//2 - 1, N - 4]`` (NeMo AutoModel's default; equal to vLLM's ``(2, N//2, N-3)`` in
    its input-of-layer convention). Shallow targets, where that collides or leaves ``[0, N-2]`` (e.g. N=5 →
    [1,1,1], N=6 → [1,2,2]), and any other ``num_aux_layers`` use an even spread over ``[0, N-2]`` instead of an
    error: ``round(i·(N-2)/(k-1))`` for i = 0..k-1 — never the last layer, whose HF output is post-norm.
    """
    if num_aux_layers is None:
        num_aux_layers = EAGLE3_DRAFT_OPTIONS["num_aux_layers"]
    n, k = int(num_target_layers), int(num_aux_layers)
    if k < 1:
        raise ValueError(f"num_aux_layers must be >= 1, got {k}")
    if k == 3:
        ids = [1, n // 2 - 1, n - 4]
        if len(set(ids)) == 3 and ids == sorted(ids) and ids[0] >= 0 and ids[-1] <= n - 2:
            return ids
    if n - 1 < k:
        raise ValueError(f"a target with {n} layers has only {max(n - 1, 0)} usable feature layers "
                         f"(0..N-2); cannot pick {k} distinct ids")
    if k == 1:
        return [(n - 2) // 2]
    return [round(i * (n - 2) / (k - 1)) for i in range(k)]


def default_eagle1_layer_ids(num_target_layers: int, **_options) -> list[int]:
    """EAGLE-1/2 uses the final (post-norm) hidden state only: no intermediate layers."""
    return []


__all__ = [
    "DraftSpec", "DENSE_ARCHITECTURES", "SPECS", "EAGLE1_DRAFT_REGISTRY", "EAGLE3_DRAFT_REGISTRY",  # DraftSpec: NeMo's
    "resolve_eagle1_draft_spec", "resolve_eagle3_draft_spec", "default_aux_layer_ids", "default_eagle1_layer_ids",
    "DRAFT_OPTIONS", "OBJECTIVE_OPTIONS", "DRAFTER_OPTIONS",
]
