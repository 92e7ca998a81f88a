"""Run inside the SpecForge 0.2.0 environment: load an exported EAGLE-3 directory (the SGLang layout) with
SpecForge's own ``LlamaForCausalLMEagle3.from_pretrained`` and write its first-step logits for given inputs.

    python specforge_eagle3.py DRAFT_DIR INPUTS.safetensors OUT.json [SAVE_DIR]

INPUTS holds ``ids`` (1, T) and ``aux`` (1, T, 3·H). OUT gets the loading report (missing / unexpected tensor
names, warnings) and the logits of SpecForge's embed → fc → midlayer → compute_logits path (draft vocab, fp32).
SpecForge 0.2.0 under its transformers pin leaves the rotary buffers uninitialised after ``from_pretrained`` on
CPU (a peer bug, ../shared/interop/README.md): they are rebuilt from the config first.
"""

import json
import sys
import warnings

import torch
from safetensors.torch import load_file

from client_common import resave, weight_warnings

from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3, prepare_decoder_attention_mask


def main(draft_dir: str, inputs: str, out: str, save_dir: str | None = None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = LlamaForCausalLMEagle3.from_pretrained(draft_dir, output_loading_info=True)
    model = model.float().eval()
    model.midlayer.self_attn._init_rope()  # noqa: SLF001  (see module docstring)
    saved = set(load_file(f"{draft_dir}/model.safetensors"))
    own = set(model.state_dict())
    tensors = load_file(inputs)
    ids, aux = tensors["ids"], tensors["aux"]
    t = ids.shape[1]

    def logits_of(m):
        with torch.no_grad():
            emb = m.embed_input_ids(ids)
            hidden = m.project_hidden_states(aux)
            mask = prepare_decoder_attention_mask(torch.ones(1, t, dtype=torch.bool), (1, t), hidden, 0)
            hidden = m.backbone(emb, hidden, None, mask, torch.arange(t)[None], use_cache=False)
            return m.compute_logits(hidden)[0].tolist()

    logits = logits_of(model)
    report = {"missing": sorted(set(info.get("missing_keys", [])) | (own - saved)),
              "unexpected": sorted(set(info.get("unexpected_keys", [])) | (saved - own)),
              "warnings": weight_warnings(caught),
              "aux_layer_ids": (getattr(model.config, "eagle_config", None) or {}).get(
                  "eagle_aux_hidden_state_layer_ids"),
              "logits": logits}
    if save_dir:
        report["saved_logits"] = resave(model, save_dir, logits_of)
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(*sys.argv[1:5])
