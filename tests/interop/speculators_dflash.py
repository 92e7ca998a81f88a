"""Run inside the speculators 0.9.0 environment: load an exported DFlash directory with speculators' own
``DFlashDraftModel.from_pretrained`` and write its block hidden states and logits for given inputs.

    python speculators_dflash.py DRAFT_DIR INPUTS.safetensors OUT.json [SAVE_DIR]

INPUTS holds ``ids`` (1, T) token ids, ``aux`` (1, T, k·H) the captured target layers, ``anchors`` (N,) sorted
anchor positions (< T − block_size) and ``verifier_last`` (1, T, H). speculators' ``forward`` runs only inside its
loss, so the script calls the backbone it wraps, ``DFlashDraftModel._backbone_forward`` (speculators'
``models/dflash/core.py``): its own anchor-block mask (``attention.py``), mask-token block embedding through the
verifier's ``embed_tokens``, positions, layers and final norm. With ``loss_mask`` set at exactly the anchors and
``max_anchors = N`` its random anchor draw (``select_anchors``) picks exactly those anchors, sorted. OUT gets the
loading report (missing / unexpected tensor names, weight warnings, the aux layer ids, causality flags) and the
final-normed hidden ``(N·B, H)`` and ``lm_head`` logits (fp32). The draft layers run with eager attention
(speculators' float mask; its default, flex attention, compiles its mask builder).
"""

import json
import sys
import warnings

import torch
from safetensors.torch import load_file

from client_common import weight_warnings

from speculators.models.dflash import DFlashDraftModel, DFlashSpeculatorConfig


def load(draft_dir: str):
    config = DFlashSpeculatorConfig.from_pretrained(draft_dir)
    config.transformer_layer_config._attn_implementation = "eager"  # noqa: SLF001
    return DFlashDraftModel.from_pretrained(draft_dir, config=config).float().eval()


def block_outputs(model, t) -> tuple[list, list]:
    ids, anchors = t["ids"], t["anchors"]
    loss_mask = torch.zeros_like(ids)
    loss_mask[0, anchors] = 1
    torch.manual_seed(0)
    with torch.no_grad():
        hidden, logits, _targets, _mask, _idx = model._backbone_forward(  # noqa: SLF001
            hidden_states=t["aux"], input_ids=ids, loss_mask=loss_mask, verifier_last_hidden_states=t["verifier_last"],
            document_ids=torch.zeros_like(ids), position_ids=torch.arange(ids.shape[1])[None],
            max_anchors=int(anchors.numel()))
    return hidden[0].tolist(), logits[0].tolist()


def main(draft_dir: str, inputs: str, out: str, save_dir: str | None = None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load(draft_dir)
    saved = set(load_file(f"{draft_dir}/model.safetensors"))
    own = {n for n in model.state_dict() if not n.startswith("rotary_emb.")}
    ignored = set(model._keys_to_ignore_on_load_missing)  # noqa: SLF001  (verifier copies, reloaded from it)
    t = load_file(inputs)
    hidden, logits = block_outputs(model, t)
    report = {"missing": sorted(own - saved - ignored), "unexpected": sorted(saved - own),
              "warnings": weight_warnings(caught),
              "nan_tensors": sorted(n for n, p in model.state_dict().items()
                                    if p.is_floating_point() and bool(p.isnan().any())),
              "aux_layer_ids": model.config.aux_hidden_state_layer_ids,
              "block_size": model.block_size, "mask_token_id": model.mask_token_id,
              "sliding_window_non_causal": model.config.sliding_window_non_causal,
              "sample_from_anchor": model.config.sample_from_anchor,
              "uses_sliding_window_attn": model.uses_sliding_window_attn,
              "hidden": hidden, "logits": logits}
    if save_dir:
        report["saved_hidden"] = resave(model, save_dir, t)
    with open(out, "w") as f:
        json.dump(report, f)


def resave(model, save_dir: str, t) -> list:
    """Change every draft weight a little (seeded), save with speculators' own ``save_pretrained`` to ``save_dir``
    and return the changed model's hidden states: a checkpoint written by the client, for draftsmith's reader."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and p.is_floating_point():  # not the frozen verifier copies
                p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(save_dir)
    return block_outputs(model, t)[0]


if __name__ == "__main__":
    main(*sys.argv[1:5])
