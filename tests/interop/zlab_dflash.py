"""Run inside the z-lab dflash 0.1.0 environment: load an exported DFlash directory with z-lab's own
``DFlashDraftModel.from_pretrained`` and write its hidden states for one block over a given context.

    python zlab_dflash.py DRAFT_DIR INPUTS.safetensors OUT.json

INPUTS holds ``noise`` (1, B, H) block embeddings, ``context`` (1, C, m·H) captured target features and
``positions`` (1, C + B) (context then block, as z-lab's generate passes them). OUT gets the loading report and
the final-normed hidden states (fp32).
"""

import json
import sys
import warnings

import torch
from safetensors.torch import load_file

from client_common import weight_warnings

from dflash.model import DFlashDraftModel


def main(draft_dir: str, inputs: str, out: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = DFlashDraftModel.from_pretrained(draft_dir, output_loading_info=True,
                                                       attn_implementation="sdpa")
    model = model.float().eval()
    t = load_file(inputs)
    with torch.no_grad():
        hidden = model(position_ids=t["positions"], noise_embedding=t["noise"], target_hidden=t["context"])
    report = {"missing": sorted(info.get("missing_keys", [])), "unexpected": sorted(info.get("unexpected_keys", [])),
              "warnings": weight_warnings(caught),
              "layer_ids": model.config.dflash_config["target_layer_ids"],
              "hidden": hidden[0].tolist()}
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
