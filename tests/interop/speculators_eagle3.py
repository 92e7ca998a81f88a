"""Run inside the speculators 0.9.0 environment: load an exported EAGLE-3 directory with speculators' own
``Eagle3DraftModel.from_pretrained`` and write its first-step logits for given inputs.

    python speculators_eagle3.py DRAFT_DIR INPUTS.safetensors OUT.json [SAVE_DIR]

INPUTS holds ``ids`` (1, T) and ``aux`` (1, T, k·H). OUT gets the loading report (missing / unexpected tensor
names, warnings) and the logits (draft vocab, fp32) of speculators' forward at TTT step 0.
"""

import json
import sys
import warnings

import torch
from safetensors.torch import load_file

from client_common import resave, weight_warnings

from speculators.models.eagle3 import Eagle3DraftModel


def main(draft_dir: str, inputs: str, out: str, save_dir: str | None = None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = Eagle3DraftModel.from_pretrained(draft_dir, attn_implementation="eager").float().eval()
    saved = set(load_file(f"{draft_dir}/model.safetensors"))
    own = set(model.state_dict())
    ignored = set(model._keys_to_ignore_on_load_missing)  # noqa: SLF001  (verifier copies, absent maps)
    tensors = load_file(inputs)
    ids, aux = tensors["ids"], tensors["aux"]

    def logits_of(m):
        logits = []
        hook = m.lm_head.register_forward_hook(lambda mod, i, o: logits.append(o.detach()))
        with torch.no_grad():
            m(hidden_states=aux, input_ids=ids, document_ids=torch.zeros_like(ids),
              position_ids=torch.arange(ids.shape[1])[None], ttt_steps=1)
        hook.remove()
        return logits[0][0].tolist()

    logits = logits_of(model)
    report = {"missing": sorted(own - saved - {k for k in ignored if "." not in k or k.endswith("weight")}),
              "unexpected": sorted(saved - own),
              "warnings": weight_warnings(caught),
              "aux_layer_ids": model.config.eagle_aux_hidden_state_layer_ids,
              "logits": logits}
    if save_dir:
        report["saved_logits"] = resave(model, save_dir, logits_of)
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
