"""`draftsmith train`: config schema and CLI, schedule, the loop with an in-test method (loss falls, eval with
replay τ, final draft loadable), packing, NaN stop, atomic checkpoints, SIGKILL + resume equivalence, and the
bad inputs that must give one clear line and a non-zero exit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import draftsmith
from draftsmith.errors import ConfigError, TrainingError
from draftsmith.train import checkpointing as ckpt
from draftsmith.train.config import describe_keys, from_dict, load_config
from draftsmith.train.schedule import lr_factor

from support.cli import subprocess_env
from support.tiny import make_chat_data, make_target
from support.train import (ToyDraft, finite, launcher, load_weights, read_metrics, register_toy, run_train,
                           toy_config)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return {"target": make_target(root / "tgt"), "data": make_chat_data(root / "d.jsonl", n=24),
            "root": root}


def cli(tmp_path, *args, timeout=240):
    return subprocess.run([sys.executable, str(launcher(tmp_path)), *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=timeout)


# -- config and CLI surface ------------------------------------------------------------------------------------
def test_help_lists_every_key_and_imports_no_torch():
    code = ("import sys, contextlib, io\n"
            "from draftsmith.cli import build_parser\n"
            "out = {}\n"
            "for cmd in ('train', 'prepare-features', 'inspect-data'):\n"
            "    buf = io.StringIO()\n"
            "    with contextlib.redirect_stdout(buf):\n"
            "        try:\n"
            "            build_parser().parse_args([cmd, '--help'])\n"
            "        except SystemExit:\n"
            "            pass\n"
            "    out[cmd] = buf.getvalue()\n"
            "heavy = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]\n"
            "import json; print(json.dumps({'help': out, 'heavy': heavy}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         timeout=60)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["heavy"] == []
    text = info["help"]["train"]
    keys = list(describe_keys())
    assert len(keys) > 40
    for key, _tp, default, _help in keys:
        assert f"  {key} (" in text and f"default {default})" in text, key
    for flag in ("--method", "--target", "--data", "--output-dir", "--max-steps", "--seq-len", "--batch-size", "--lr",
                 "--offline-features", "--resume", "--set"):
        assert flag in text
    assert "--dtype" in info["help"]["prepare-features"] and "--data" in info["help"]["inspect-data"]


def test_yaml_then_flags_then_set(tmp_path):
    from draftsmith.cli import build_parser
    from draftsmith.commands.train import config_from_args

    path = tmp_path / "c.yaml"
    path.write_text("method: dflash\ntrain:\n  lr: 3e-4\n  max_steps: 10\ndata:\n  seq_len: 128\n"
                    "draft:\n  block_size: 8\n")
    args = build_parser().parse_args(["train", str(path), "--max-steps", "20", "--set", "train.max_steps=30",
                                      "--set", "draft.mask_token_id=5", "--seq-len", "64", "--data", "a.jsonl",
                                      "--on-bad-data", "skip"])
    cfg = config_from_args(args)
    assert cfg.method == "dflash" and cfg.train.lr == 3e-4  # YAML 1.1 "3e-4" is a string: coerced
    assert cfg.train.max_steps == 30 and cfg.data.seq_len == 64 and cfg.data.train == ["a.jsonl"]
    assert cfg.data.on_bad_data == "skip"
    assert cfg.draft == {"block_size": 8, "mask_token_id": 5}
    assert cfg.train.betas == [0.9, 0.95] and cfg.distributed.strategy == "ddp"


@pytest.mark.parametrize("bad,message", [
    ({"train": {"lrr": 1}}, "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    ({"train": {"seq_len": 1}}, "did you mean 'data.seq_len'?"),
    ({"trian": {}}, "did you mean 'train'?"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
    ({"train": {"precision": "fp8"}}, "not one of auto, fp32, bf16"),
    ({"data": {"packing": "yes"}}, "expected true or false"),
])
def test_config_errors_are_precise(bad, message):
    with pytest.raises(ConfigError) as err:
        from_dict(bad)
    assert message in str(err.value)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["train.lr"])


def test_warmup_then_cosine_to_min_ratio():
    f = [lr_factor(s, 100, 0.1, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warmup over 10 steps
    assert f[10] == pytest.approx(1.0) and f[99] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(
        torch.tensor(torch.pi * 89 / 90)).item()))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone decay after warmup
    assert lr_factor(100, 100, 0.1, 0.1) == pytest.approx(0.1)
    assert lr_factor(0, 10, 0.0, 0.0) == pytest.approx(1.0)


# -- the loop ----------------------------------------------------------------------------------------------------
def test_toy_training_learns_evaluates_and_saves_a_loadable_draft(tmp_path, world, toy):
    cfg = toy_config(tmp_path, world["target"], world["data"], **{
        "train.max_steps": 24, "train.lr": 5e-2, "data.eval_fraction": 0.25, "train.eval_every": 12})
    result = run_train(cfg)
    records = read_metrics(tmp_path / "run")
    train_loss = [r["loss"] for r in records if r.get("split") == "train"]
    assert len(train_loss) == 24 and all(finite(x) for x in train_loss)
    assert sum(train_loss[-6:]) / 6 < sum(train_loss[:6]) / 6 - 0.1
    evals = [r for r in records if r.get("split") == "eval"]
    assert [r["step"] for r in evals] == [12, 24]
    assert evals[-1]["loss"] < evals[0]["loss"]
    for key in ("accuracy", "tau_sim", "tau_replay", "replay_rounds"):  # the method's metrics + replay τ
        assert finite(evals[-1][key]), key
    assert 1.0 <= evals[-1]["tau_replay"] <= 2.0  # the toy drafts one token: τ ∈ [1, 2]
    first = records[0]
    assert first["lr"] == pytest.approx(5e-2 * lr_factor(0, 24, 0.0, 0.1))
    assert finite(first["tokens_per_s"]) and 0 < first["target_time_share"] < 1 and finite(first["grad_norm"])
    # the final draft: save_pretrained layout, loadable through the registry, equal to the trained weights
    final = result.final_dir
    assert sorted(p.name for p in final.iterdir()) == ["config.json", "model.safetensors"]
    loaded = draftsmith.load_draft(final)
    assert isinstance(loaded, ToyDraft)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, load_weights(ckpt.latest_checkpoint(tmp_path / "run") / "draft")[k])
    # prepare() got the supervised-token counts, cached beside the run, and its effect was saved
    from safetensors.torch import load_file

    counts = load_file(str(tmp_path / "run" / "token_counts.safetensors"))["counts"]
    assert counts.sum() > 0 and counts.numel() == 128
    assert loaded.token_prior.abs().sum() > 0
    assert (tmp_path / "run" / "config.yaml").is_file()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_other_architectures_and_packing(tmp_path, world, toy, arch):
    target = make_target(tmp_path / arch, arch=arch, num_layers=3)
    cfg = toy_config(tmp_path, target, world["data"], **{"train.max_steps": 3, "data.packing": True,
                                                          "data.seq_len": 200})
    run_train(cfg)
    records = read_metrics(tmp_path / "run")
    assert len(records) == 3 and all(finite(r["loss"]) for r in records)
    # packed rows: ~2 conversations per 200-token row -> more tokens per batch than unpacked rows
    assert records[0]["supervised_tokens"] > 150


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, world, toy):
    cfg = toy_config(tmp_path, world["target"], world["data"], method_options={"nan_after_calls": 5},
                     **{"train.max_steps": 10, "train.save_every": 2})
    with pytest.raises(TrainingError) as err:
        run_train(cfg)
    message = str(err.value)
    assert "loss is nan at step 6" in message and "step_00000004" in message
    found = ckpt.list_checkpoints(tmp_path / "run")
    assert [s for s, _ in found] == [2, 4]  # keep_checkpoints=2, nothing written after the failure
    assert all(torch.isfinite(v).all() for v in load_weights(found[-1][1] / "draft").values())
    assert not (tmp_path / "run" / "final").exists()


def test_incomplete_checkpoints_are_ignored_and_existing_runs_protected(tmp_path, world, toy):
    out = tmp_path / "run"
    cfg = toy_config(tmp_path, world["target"], world["data"], **{"train.max_steps": 2})
    run_train(cfg)
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [2]
    # debris of a run killed while saving: a temp dir and a step dir without meta.json
    (ckpt.checkpoint_dir(out) / ".tmp-step_00000003-1").mkdir()
    broken = ckpt.step_dir(out, 4)
    (broken / "draft").mkdir(parents=True)
    (broken / ckpt.STATE).write_bytes(b"partial")
    assert ckpt.latest_checkpoint(out) == ckpt.step_dir(out, 2)
    with pytest.raises(TrainingError, match="already holds checkpoints; pass --resume"):
        run_train(cfg)
    cfg["train"].update(resume="latest", max_steps=3)
    result = run_train(cfg)
    assert result.step == 3 and ckpt.latest_checkpoint(out) == ckpt.step_dir(out, 3)
    assert json.loads((ckpt.step_dir(out, 3) / "meta.json").read_text())["step"] == 3
    cfg["train"].update(resume=None, overwrite=True, max_steps=1)
    assert run_train(cfg).step == 1 and [s for s, _ in ckpt.list_checkpoints(out)] == [1]


def test_resume_after_sigkill_reaches_the_same_weights(tmp_path, world, toy):
    steps = 10
    base = dict(method_options={"delay": 0.0}, **{"train.max_steps": steps, "train.save_every": 2,
                                                   "train.keep_checkpoints": 0, "data.eval_fraction": 0.2,
                                                   "train.eval_every": 3})
    reference = run_train(toy_config(tmp_path / "ref", world["target"], world["data"], **base))

    killed_cfg = toy_config(tmp_path / "killed", world["target"], world["data"], **base)
    killed_cfg["method_options"] = {"delay": 0.4}  # slow steps, so the kill lands mid-run
    path = tmp_path / "killed.yaml"
    path.write_text(json.dumps(killed_cfg))
    proc = subprocess.Popen([sys.executable, str(launcher(tmp_path)), "train", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env())
    out = Path(killed_cfg["train"]["output_dir"])
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(ckpt.list_checkpoints(out)) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [s for s, _ in ckpt.list_checkpoints(out)]
    assert done and done[-1] < steps and not (out / "final").exists()

    res = cli(tmp_path, "train", str(path), "--resume", "--set", "method_options.delay=0")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resumed from {ckpt.step_dir(out, done[-1])} at step {done[-1]}" in res.stderr
    want, got = load_weights(reference.final_dir), load_weights(out / "final")
    assert sorted(want) == sorted(got)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    # the metrics log continues where the checkpoint left off, marking the resume
    records = read_metrics(out)
    assert any(r.get("event") == "resume" and r["step"] == done[-1] for r in records)
    assert max(r.get("step", 0) for r in records) == steps
    logged = [(r["step"], r["split"]) for r in records if "split" in r]
    assert len(logged) == len(set(logged))  # lines the killed run wrote after its checkpoint were dropped
    assert [s for s, split in logged if split == "train"] == list(range(1, steps + 1))


# -- bad inputs: one clear line, non-zero exit ---------------------------------------------------------------------
BAD_CASES = ["missing_target", "no_tokenizer", "no_chat_template", "empty_dataset", "all_masked_dataset",
             "unknown_key", "unknown_method", "wrong_manifest"]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every bad-input CLI run, two at a time (independent runs; most of their time is importing torch)."""
    root = tmp_path_factory.mktemp("bad")
    good = make_target(root / "good")
    data = make_chat_data(root / "d.jsonl", n=4)
    no_tok = make_target(root / "no_tokenizer", tokenizer=False)
    no_template = make_target(root / "no_template", chat_template=None)
    (root / "empty.jsonl").write_text("\n")
    (root / "masked.jsonl").write_text(
        "\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"}]}) for i in range(3)) + "\n")
    nope = str(root / "nope")
    draftsmith.reset_plugins()
    register_toy()
    from draftsmith.train.prepare import prepare_features

    features = root / "features"  # built for seq_len 96; the run below asks for 64
    prepare_features(from_dict(toy_config(root, good, data)), features, log=lambda s: None)
    cases = {
        "missing_target": ("--target", nope, f"target path '{nope}' does not exist"),
        "no_tokenizer": ("--target", str(no_tok), "has no tokenizer files"),
        "no_chat_template": ("--target", str(no_template), "has no chat template; pass one with --chat-template"),
        "empty_dataset": ("--data", str(root / "empty.jsonl"), "is empty"),
        "all_masked_dataset": ("--data", str(root / "masked.jsonl"), "all 3 samples have an all-zero loss mask"),
        "unknown_key": ("--set", "train.max_step=3", "unknown config key 'train.max_step'; did you mean "
                                                     "'train.max_steps'?"),
        "unknown_method": ("--method", "medusa9", "unknown draft method 'medusa9'"),
        "wrong_manifest": ("--offline-features", str(features), "field 'seq_len' is 96, the run has 64"),
    }
    script = launcher(root)
    commands = {}
    for case, (flag, value, message) in cases.items():
        args = ["train", "--method", "toy", "--target", str(good), "--data", str(data),
                "--output-dir", str(root / case), "--max-steps", "1", "--seq-len", "64"]
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
        commands[case] = [sys.executable, str(script), *args]

    def run(case):
        res = subprocess.run(commands[case], capture_output=True, text=True, env=subprocess_env(), timeout=300)
        return case, (res.returncode, res.stderr, cases[case][2])

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, cases))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_inputs_give_one_clear_line(bad_runs, case):
    returncode, stderr, message = bad_runs[case]
    assert returncode != 0
    errors = [line for line in stderr.splitlines() if line.startswith("draftsmith: error:")]
    assert len(errors) == 1 and message in errors[0], stderr[-1500:]
    assert "Traceback" not in stderr
