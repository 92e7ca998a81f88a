"""Every installed first-party method trains through core's method-agnostic trainer: a few steps on tiny targets
of two architectures make the loss fall, evaluation reports the method's metrics, and the final draft loads back
through the registry with the trained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import draftsmith
from draftsmith.train.config import from_dict

from support import REPO
from support.tiny import make_chat_data, make_target
from support.train import finite, read_metrics, toy_config

# draft options, method options and a learning rate that moves a tiny draft within 10 steps
METHODS = {
    "eagle1": ({}, {}, 1e-2),
    "eagle3": ({}, {"ttt_steps": 2}, 1e-2),
    "dflash": ({"mask_token_id": 3, "num_draft_layers": 1, "block_size": 4}, {"num_anchors": 8}, 1e-2),
    "dspark": ({"mask_token_id": 3, "num_draft_layers": 1, "block_size": 4, "markov_rank": 8},
               {"num_anchors": 8, "block_size": 4, "markov_rank": 8, "num_draft_layers": 1}, 1e-2),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    return {"root": root, "data": make_chat_data(root / "d.jsonl", n=16),
            "qwen3": make_target(root / "qwen3", "qwen3", num_layers=6),
            "llama": make_target(root / "llama", "llama", num_layers=6)}


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_and_its_draft_loads(tmp_path, world, method, arch):
    from draftsmith.train.trainer import train

    try:
        draftsmith.get_method(method).load_objective()
    except Exception as exc:  # a broken plugin must fail loudly here, not vanish from the test list
        pytest.fail(f"method {method!r}: objective does not import: {exc}")
    draft, options, lr = METHODS[method]
    cfg = toy_config(tmp_path, world[arch], world["data"], method=method, draft=draft, method_options=options,
                     **{"train.max_steps": 10, "train.lr": lr, "data.eval_fraction": 0.25, "data.seq_len": 80})
    result = train(from_dict(cfg))
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if r.get("split") == "train"]
    assert len(losses) == 10 and all(finite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert finite(result.eval_metrics["loss"]) and result.eval_metrics["tokens"] > 0
    loaded = draftsmith.load_draft(result.final_dir)
    assert type(loaded) is draftsmith.resolve_draft_spec(method, _archs(world[arch])).load_draft_cls()
    from safetensors.torch import load_file

    saved = load_file(str(result.final_dir / "model.safetensors"))
    state = loaded.state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value)


def _archs(target: Path) -> list[str]:
    import json

    return json.loads((target / "config.json").read_text())["architectures"]


@pytest.mark.parametrize("name", ["eagle1-tiny", "eagle3-tiny", "dflash-tiny", "dspark-tiny", "qwen3-8b-eagle3"])
def test_example_configs_are_valid_and_train(tmp_path, world, name):
    """The shipped example configs parse against the schema and their draft/method options are accepted by the
    method (two steps on a tiny Qwen3 stand-in for the configured target and data)."""
    from draftsmith.train.config import load_config, to_dict
    from draftsmith.train.trainer import train

    path = REPO / "examples" / "configs" / f"{name}.yaml"
    cfg = to_dict(load_config(path))
    cfg["target"].update(path=str(world["qwen3"]), dtype="auto")
    cfg["data"].update(train=[str(world["data"])], eval=[], eval_fraction=0.25, seq_len=64)
    cfg["train"].update(max_steps=2, batch_size=2, grad_accum=1, output_dir=str(tmp_path / "run"), progress=False,
                        eval_every=0, save_every=0)
    if "draft_vocab_size" in cfg["draft"]:
        cfg["draft"]["draft_vocab_size"] = 64  # the stand-in target has a 128-token vocabulary
    result = train(from_dict(cfg))
    assert result.step == 2 and all(finite(r["loss"]) for r in read_metrics(tmp_path / "run") if "loss" in r)
