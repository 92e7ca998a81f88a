"""Run inside the z-lab dflash 0.1.0 environment: build a z-lab ``DFlashDraftModel`` from a config, give it
seeded random weights, save it with z-lab's own ``save_pretrained`` (a checkpoint laid out as a public
``z-lab/*-DFlash`` one, without any draftsmith metadata) and write its hidden states for one block.

    python zlab_save.py CONFIG.json INPUTS.safetensors OUT.json SAVE_DIR

CONFIG is the ``Qwen3Config`` keyword dict (with ``dflash_config``, ``block_size``, ``num_target_layers``, …);
INPUTS holds ``noise`` (1, B, H), ``context`` (1, C, m·H) and ``positions`` (1, C + B). The hidden states come
from the model reloaded from SAVE_DIR with ``from_pretrained`` (no mask given: z-lab builds its own from
``is_causal`` / ``layer_types`` / ``sliding_window``). OUT also gets the ids, causality and window z-lab uses.
"""

import json
import sys

import torch
from safetensors.torch import load_file
from transformers import Qwen3Config

from dflash.model import DFlashDraftModel


def main(config_file: str, inputs: str, out: str, save_dir: str) -> None:
    with open(config_file) as f:
        config = Qwen3Config(**json.load(f))
    torch.manual_seed(0)
    model = DFlashDraftModel(config)
    with torch.no_grad():
        for p in model.parameters():  # random, not the init's unit norms and small matrices
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if p.dim() == 1 else 0.15 * torch.randn_like(p))
    model.save_pretrained(save_dir)
    model = DFlashDraftModel.from_pretrained(save_dir, attn_implementation="sdpa").float().eval()
    t = load_file(inputs)
    with torch.no_grad():
        hidden = model(position_ids=t["positions"], noise_embedding=t["noise"], target_hidden=t["context"])
    attn = model.layers[0].self_attn
    report = {"layer_ids": list(model.target_layer_ids), "block_size": model.block_size,
              "mask_token_id": model.mask_token_id, "is_causal": attn.is_causal,
              "sliding_window": attn.sliding_window, "hidden": hidden[0].tolist()}
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
