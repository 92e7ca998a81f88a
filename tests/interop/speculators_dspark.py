"""Run inside the speculators 0.9.0 environment: load an exported DSpark directory with speculators' own
``DSparkDraftModel.from_pretrained`` (which also reloads ``embed_tokens`` / ``lm_head`` / ``verifier_norm`` from
the verifier the config names) and write what its training forward computes for given inputs.

    python speculators_dspark.py DRAFT_DIR INPUTS.safetensors OUT.json

INPUTS holds ``ids`` (1, S), ``hidden`` (1, S, m·H) the concatenated captured layers, ``loss_mask`` (1, S),
``verifier_last`` (1, S, H) and ``num_anchors`` (1,). The loss mask leaves exactly ``num_anchors`` anchor
candidates, so speculators' random ``select_anchors`` keeps them all, sorted (deterministic). The forward is
``DSparkDraftModel.forward`` itself, with speculators' default attention (``simple_flex_attention``, unfused on
CPU): anchored blocks → DFlash backbone → ``lm_head`` + Markov bias → confidence head → the recipe's CE + TV
loss (eager kernels). Its Markov-adjusted logits and confidence logits are read where they enter
``compute_metrics`` (the loss), the anchors where ``_build_attention_mask`` returns them. OUT gets the loading
report (missing / unexpected tensor names, weight warnings, non-finite parameters), the captured ids
(``aux_hidden_state_layer_ids``, speculators' in(k)), the anchors, logits (A·γ, V) and confidence (A·γ,).
"""

import json
import sys
import warnings

import torch
from safetensors.torch import load_file

from client_common import weight_warnings

import speculators.models.dspark.core as dspark_core
from speculators.models.dspark import DSparkDraftModel


def main(draft_dir: str, inputs: str, out: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = DSparkDraftModel.from_pretrained(draft_dir).float().eval()
    saved = set(load_file(f"{draft_dir}/model.safetensors"))
    own = set(model.state_dict())
    ignored = set(model._keys_to_ignore_on_load_missing)  # noqa: SLF001  (reloaded from the verifier)
    seen = {}
    original_metrics = dspark_core.compute_metrics

    def capture_metrics(logits, targets, confidence_logits, *args, **kwargs):
        seen["logits"], seen["confidence"] = logits.detach(), confidence_logits
        return original_metrics(logits, targets, confidence_logits, *args, **kwargs)

    original_mask = model._build_attention_mask  # noqa: SLF001

    def capture_anchors(*args, **kwargs):
        result = original_mask(*args, **kwargs)
        seen["anchors"] = result[2].detach()
        return result

    dspark_core.compute_metrics = capture_metrics
    model._build_attention_mask = capture_anchors  # noqa: SLF001
    t = load_file(inputs)
    # the DSpark recipe's loss (CE + TV), eager kernels: the fused ones need Triton (GPU)
    train_kwargs, _ = DSparkDraftModel.get_trainer_kwargs(loss_fn='{"ce": 0.1, "tv": 0.9}',
                                                          loss_implementation="eager",
                                                          max_anchors=int(t["num_anchors"][0]))
    with torch.no_grad():
        model(hidden_states=t["hidden"], input_ids=t["ids"], loss_mask=t["loss_mask"],
              verifier_last_hidden_states=t["verifier_last"], document_ids=torch.zeros_like(t["ids"]),
              position_ids=torch.arange(t["ids"].shape[1])[None], **train_kwargs)
    report = {"missing": sorted(own - saved - ignored), "unexpected": sorted(saved - own),
              "warnings": weight_warnings(caught),
              "non_finite": sorted(n for n, p in model.state_dict().items()
                                   if p.is_floating_point() and not bool(torch.isfinite(p).all())),
              "aux_layer_ids": list(model.target_layer_ids), "sample_from_anchor": model.config.sample_from_anchor,
              "markov_head_type": None if model.markov_head is None else model.markov_head.head_type,
              "anchors": seen["anchors"].tolist(), "logits": seen["logits"][0].tolist(),
              "confidence": None if seen["confidence"] is None else seen["confidence"][0].tolist()}
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
