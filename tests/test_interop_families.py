"""Per target family, in the real clients: an EAGLE-3 draft exported for speculators 0.9.0 and for SGLang /
SpecForge 0.2.0, and a DFlash draft exported for z-lab dflash 0.1.0, load strictly and the clients' own forward
reproduces ours (fp32) — or the writer refuses the export, naming what the client would run differently.

The families are the ones whose rope a client could build differently from the draft, which copies the
target's: YaRN without truncation + attention biases (gpt-oss), Gemma 4's ``proportional`` rope with a 32-dim
global head, partial rotary (Qwen3.5), MLA's 8-dim rope head (DeepSeek-V3), θ = 1e6 with GELU (Gemma 3), a
Qwen3 with YaRN (truncated) and a Llama with llama3 scaling; and Qwen3.5 again with the draft option
``rotary=full``, which these clients then serve. What the clients taught us is in EXPECTED: SpecForge
needs YaRN's mscale / beta keys written out (it crashed on every YaRN draft before), rounds YaRN's correction
range and knows no ``proportional`` rope; speculators, SpecForge and z-lab rotate the whole head.

Client environments: ``$DRAFTSMITH_INTEROP_ENVS`` (default ``.interop/``, built by scripts/install_interop.sh);
a missing one is a failure, not a skip.
"""

from __future__ import annotations

import pytest
import torch

import draftsmith
from draftsmith.coverage import spec_for, tiny_family_target, writer_options
from draftsmith.errors import ConfigError
from draftsmith.testing import make_tiny_target, tiny_target_config

from support.interop import dflash_block_inputs, eagle3_inputs, run_client_script

ROPES = {"yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 1e6},
         "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64, "rope_theta": 5e5}}
# "Arch/full": the draft option rotary=full (the draft rotates its whole head, as these clients do)
FAMILIES = ["GptOssForCausalLM", "Gemma4ForCausalLM", "Qwen3_5ForCausalLM", "Qwen3_5ForCausalLM/full",
            "DeepseekV3ForCausalLM", "Gemma3ForCausalLM", "Qwen3ForCausalLM+yarn", "LlamaForCausalLM+llama3"]
# (family, method, format) -> the refusal's words; every other case must load and match
EXPECTED = {("GptOssForCausalLM", "eagle3", "sglang"): "round YaRN's correction range",
            ("Gemma4ForCausalLM", "eagle3", "sglang"): "not this draft's 'proportional'",
            ("Qwen3_5ForCausalLM", "eagle3", "sglang"): "rotate the whole head",
            ("Qwen3_5ForCausalLM", "eagle3", "speculators"): "rotate the whole head",
            ("Qwen3_5ForCausalLM", "dflash", "zlab"): "rotate the whole head"}
CLIENTS = {("eagle3", "speculators"): ("speculators-0.9.0", "speculators_eagle3.py"),
           ("eagle3", "sglang"): ("specforge-0.2.0", "specforge_eagle3.py"),
           ("dflash", "zlab"): ("zlab-dflash-0.1.0", "zlab_dflash.py")}
_TARGETS: dict = {}


def family_target(name: str, root):
    """``(arch, model, target dir)``: the tiny target of ``name`` (``Arch+rope`` overrides the rope), saved."""
    if name not in _TARGETS:
        arch, _, rope = name.partition("+")
        if rope:
            config = tiny_target_config(arch, max_position_embeddings=256, rope_parameters=ROPES[rope])
            model = make_tiny_target(config, head_scale=4.0)
        else:
            model = tiny_family_target(arch)[0]
        where = root / name
        model.save_pretrained(where)
        _TARGETS[name] = (arch, model, where)
    return _TARGETS[name]


def _perturbed(draft):
    """Weights off their init (norms at 1, zero biases would hide a misread tensor)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return draft.float().eval()


def _eagle3_case(arch, model, root, options):
    draft = _perturbed(spec_for("eagle3", arch)[0].build(model.config, **options))
    inputs = root / "eagle3-inputs.safetensors"
    return draft, inputs, eagle3_inputs(draft, inputs), "logits"


def _dflash_case(arch, model, root, options):
    draft = _perturbed(spec_for("dflash", arch)[0].build(model.config, mask_token_id=127, num_draft_layers=2,
                                                         block_size=4, **options))
    inputs = root / "dflash-inputs.safetensors"
    return draft, inputs, dflash_block_inputs(draft, inputs), "hidden"


@pytest.mark.slow
@pytest.mark.parametrize("method,fmt", list(CLIENTS), ids=[f"{m}-{f}" for m, f in CLIENTS])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_exports_load_in_the_real_client_or_are_refused(tmp_path_factory, family, method, fmt):
    root = tmp_path_factory.getbasetemp() / "interop-families"
    root.mkdir(exist_ok=True)
    name, _, rotary = family.partition("/")
    arch, model, target_dir = family_target(name, root)
    case = root / f"{family.replace('/', '-')}-{method}-{fmt}"
    case.mkdir()
    options = {"rotary": rotary} if rotary else {}
    draft, inputs, ours, key = (_eagle3_case if method == "eagle3" else _dflash_case)(arch, model, case, options)
    writer = draftsmith.get_registry().get_format(method, fmt).load_writer()
    expected = EXPECTED.get((family, method, fmt))
    options = writer_options(writer, target_dir)
    if expected:
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("'", "'")):
            writer(draft, case / "out", **options)
        return
    writer(draft, case / "out", **options)
    env_name, script = CLIENTS[(method, fmt)]
    report = run_client_script(env_name, script, [case / "out", inputs, case / "report.json"], case / "report.json")
    assert report["missing"] == [] and report["unexpected"] == [] and report["warnings"] == [], report
    torch.testing.assert_close(torch.tensor(report[key]), ours, rtol=1e-4, atol=1e-4)
