"""Run inside the SpecForge 0.2.0 environment: load an exported DSpark directory (the SGLang layout) with
SpecForge's own ``DSparkDraftModel.from_pretrained`` and write what its DSpark training forward computes.

    python specforge_dspark.py DRAFT_DIR TARGET_DIR INPUTS.safetensors OUT.json

The draft has no embedding or head (SpecForge and SGLang take the target's): both come from the target, loaded
with transformers in this environment. INPUTS holds ``ids`` (1, S), ``hidden`` (1, S, m·H), ``loss_mask`` (1, S),
``verifier_last`` (1, S, H) and ``num_anchors`` (1,), the number of anchor candidates the loss mask leaves, so
SpecForge's random ``_sample_anchor_positions`` keeps them all, sorted (deterministic). The forward is
``OnlineDSparkModel.forward`` (``algorithms/common/dflash_family_model.py``; dense sdpa mask) — noise blocks,
``DSparkDraftModel.forward``, ``lm_head`` + ``apply_logits_head`` (Markov bias), ``predict_confidence``, the
CE + L1 + BCE objective; the Markov-adjusted logits and the confidence logits are read as they leave
``apply_logits_head`` / ``predict_confidence``, the anchors as ``_forward_draft_blocks`` returns them. OUT gets
the loading report (missing / unexpected tensors, weight warnings, non-finite parameters), the ids SpecForge
captures (``target_layer_ids``, out(k)), the heads it built, the anchors, logits (A·γ, V) and confidence (A·γ,).
"""

import json
import sys
import warnings

import torch
from safetensors.torch import load_file

from client_common import weight_warnings
from transformers import AutoModelForCausalLM

from specforge.algorithms.common.dflash_family_model import OnlineDSparkModel
from specforge.modeling.draft.dspark import DSparkDraftModel


def main(draft_dir: str, target_dir: str, inputs: str, out: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = DSparkDraftModel.from_pretrained(draft_dir, output_loading_info=True)
    model = model.float().eval()
    saved = set(load_file(f"{draft_dir}/model.safetensors"))
    own = set(model.state_dict())
    target = AutoModelForCausalLM.from_pretrained(target_dir).float().eval()
    seen = {}
    heads = (model.apply_logits_head, model.predict_confidence)

    def logits_head(*args, **kwargs):
        seen["logits"] = heads[0](*args, **kwargs)
        return seen["logits"]

    def confidence(*args, **kwargs):
        seen["confidence"] = heads[1](*args, **kwargs)
        return seen["confidence"]

    model.apply_logits_head, model.predict_confidence = logits_head, confidence
    t = load_file(inputs)
    online = OnlineDSparkModel(model, target.lm_head, target.get_input_embeddings(),
                               mask_token_id=model.mask_token_id, block_size=model.block_size,
                               attention_backend="sdpa", num_anchors=int(t["num_anchors"][0])).eval()
    blocks = online._forward_draft_blocks  # noqa: SLF001

    def capture_blocks(*args, **kwargs):
        result = blocks(*args, **kwargs)
        seen["anchors"] = result[0]
        return result

    online._forward_draft_blocks = capture_blocks  # noqa: SLF001
    with torch.no_grad():
        online(input_ids=t["ids"], hidden_states=t["hidden"], loss_mask=t["loss_mask"],
               target_last_hidden_states=t["verifier_last"])
    vocab = seen["logits"].shape[-1]
    report = {"missing": sorted(set(info.get("missing_keys", [])) | (own - saved)),
              "unexpected": sorted(set(info.get("unexpected_keys", [])) | (saved - own)),
              "mismatched": [list(map(str, m)) for m in info.get("mismatched_keys", [])],
              "warnings": weight_warnings(caught),
              "non_finite": sorted(n for n, p in model.state_dict().items()
                                   if p.is_floating_point() and not bool(torch.isfinite(p).all())),
              "target_layer_ids": list(model.target_layer_ids), "block_size": model.block_size,
              "markov_head_type": None if model.markov_head is None else model.markov_head.markov_head_type,
              "confidence_head": model.confidence_head is not None,
              "anchors": seen["anchors"][0].tolist(), "logits": seen["logits"].reshape(-1, vocab).tolist(),
              "confidence": None if seen.get("confidence") is None else seen["confidence"].reshape(-1).tolist()}
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
