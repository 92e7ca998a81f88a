"""``draftsmith train --init-from DIR``: fine-tune an existing draft (ours, an engine export, a public layout)."""

from __future__ import annotations

import pytest
import torch
import yaml

from support.cli import run_cli, subprocess_env
from support.tiny import make_chat_data, make_target
from support.train import load_weights, run_train, toy_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm")
    target = make_target(root / "target", "llama", num_layers=8)
    data = make_chat_data(root / "d.jsonl", n=12)
    eagle = toy_config(root / "e3", target, data, method="eagle3", draft={"draft_vocab_size": 48},
                       method_options={"ttt_steps": 2}, **{"train.max_steps": 3, "data.seq_len": 64})
    dflash = toy_config(root / "df", target, data, method="dflash",
                        draft={"mask_token_id": 3, "num_draft_layers": 2, "block_size": 4},
                        method_options={"num_anchors": 8}, **{"train.max_steps": 3, "data.seq_len": 64})
    return {"root": root, "target": target, "data": data, "eagle3": run_train(eagle).final_dir,
            "dflash": run_train(dflash).final_dir}


def _warm_config(root, name, runs, method, **train):
    cfg = toy_config(root / name, runs["target"], runs["data"], method=method,
                     **{"train.max_steps": 2, "data.seq_len": 64, "train.lr": 1e-12, **{f"train.{k}": v
                                                                                   for k, v in train.items()}})
    if method == "eagle3":
        cfg["method_options"] = {"ttt_steps": 2}
    else:
        cfg["method_options"] = {"num_anchors": 8}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method, fmt", [("eagle3", "speculators"), ("eagle3", "sglang"), ("dflash", "native")])
def test_init_from_an_export_keeps_its_weights_and_restamps_the_target(runs, method, fmt):
    root, source = runs["root"], runs[method]
    export = root / f"{method}-{fmt}"
    res = run_cli(["export", "--draft", str(source), "--format", fmt, "--out", str(export)], env=subprocess_env())
    assert res.returncode == 0, res.stderr[-2000:]
    config = _warm_config(root, f"warm-{method}-{fmt}", runs, method)
    res = run_cli(["train", str(config), "--init-from", str(export)], env=subprocess_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    final = root / f"warm-{method}-{fmt}" / "run" / "final"
    before, after = load_weights(source), load_weights(final)
    assert before.keys() == after.keys()
    for name in before:  # lr 1e-12: the warm-started draft is the exported one, not a fresh init
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-9, msg=name)
    import draftsmith

    block = draftsmith.checkpoint.read_draft_metadata(final)
    assert block["init_from"] == str(export) and block["target_num_hidden_layers"] == 8
    assert "format" not in block and "read_from" not in block  # the final draft is a native one again
    assert type(draftsmith.load_draft(final)).__name__ == type(draftsmith.load_draft(source)).__name__


@pytest.mark.slow
def test_init_from_refuses_what_does_not_fit(runs):
    root = runs["root"]
    eagle_cfg = _warm_config(root, "bad-method", runs, "eagle3")
    res = run_cli(["train", str(eagle_cfg), "--init-from", str(runs["dflash"])], env=subprocess_env())
    assert res.returncode != 0 and "holds a dflash draft" in res.stderr and "Traceback" not in res.stderr
    res = run_cli(["train", str(eagle_cfg), "--init-from", str(runs["eagle3"]), "--set",
                   "draft.num_hidden_layers=2"], env=subprocess_env())
    assert res.returncode != 0 and "remove the draft options" in res.stderr and "Traceback" not in res.stderr
    other = make_target(root / "target4", "llama", num_layers=4)
    res = run_cli(["train", str(eagle_cfg), "--init-from", str(runs["eagle3"]), "--target", str(other)],
                  env=subprocess_env())
    assert res.returncode != 0 and "8-layer target" in res.stderr and "Traceback" not in res.stderr
    res = run_cli(["train", str(eagle_cfg), "--init-from", str(root / "nowhere")], env=subprocess_env())
    assert res.returncode != 0 and "does not exist" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method, fmt", [("eagle3", "vllm"), ("dflash", "speculators")])
def test_eval_of_an_engine_export_equals_eval_of_the_draft(runs, method, fmt):
    """`eval --draft` takes an engine layout (read by its format's reader): same greedy report as the draft."""
    import json

    root = runs["root"]
    export = root / f"eval-{method}-{fmt}"
    res = run_cli(["export", "--draft", str(runs[method]), "--format", fmt, "--out", str(export)],
                  env=subprocess_env())
    assert res.returncode == 0, res.stderr[-2000:]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"say {w}"}]}) + "\n"
                               for w in ("one", "two", "three")))
    reports = []
    for draft in (runs[method], export):
        res = run_cli(["eval", "--target", str(runs["target"]), "--draft", str(draft), "--prompts", str(prompts),
                       "--max-new-tokens", "12", "--device", "cpu", "--check-lossless", "--json", "--no-baseline"],
                      env=subprocess_env(), timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        reports.append(json.loads(res.stdout))
    ours, theirs = reports
    assert theirs["lossless"]["ok"] is True and ours["lossless"]["ok"] is True
    for key in ("tau", "rounds", "acceptance_offered", "drafted_tokens", "accepted_tokens", "generated_tokens"):
        assert theirs[key] == ours[key], key
