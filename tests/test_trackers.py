"""Experiment trackers for real: an EAGLE-3 run through the CLI with TensorBoard, W&B (offline) and MLflow (a local
file store), each read back with its own reader and compared with ``metrics.jsonl``; a resumed run continuing the
same tracker runs; the failure rules (stop / warn / dropped mid-run / missing package); a third-party tracker from
an installed distribution."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import draftsmith
from draftsmith.errors import TrainingError
from draftsmith.tracking import TrackerSpec

from support import REPO
from support.cli import run_cli, subprocess_env
from support.tiny import make_chat_data, make_target
from support.trackers import mlflow_client, tensorboard_scalars, tensorboard_text, wandb_run
from support.train import launcher, read_metrics, run_train, toy_config

# what every tracker must carry: the list (loss, lr, tokens/s, grad norm, per-position acceptance,
# simulated and replayed τ, eval metrics)
REQUIRED = ("train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "train/acc_0", "train/acc_1",
            "train/tau_sim", "eval/loss", "eval/acc_0", "eval/tau_sim", "eval/tau_replay")


def expected_series(run_dir: Path) -> dict[str, dict[int, float]]:
    """``{"train/loss": {step: value}}`` from metrics.jsonl (the last record of a step wins)."""
    out: dict[str, dict[int, float]] = {}
    for record in read_metrics(run_dir):
        if "split" not in record:
            continue
        for key, value in record.items():
            if key in ("step", "split") or isinstance(value, (bool, str)):
                continue
            out.setdefault(f"{record['split']}/{key}", {})[record["step"]] = float(value)
    return out


def assert_same_series(got: dict, want: dict, rel: float) -> None:
    assert set(got) == set(want)
    for key, series in want.items():
        assert got[key] == pytest.approx(series, rel=rel), key


def eagle3_config(root: Path, out: Path, **train) -> Path:
    cfg = {
        "method": "eagle3",
        "target": {"path": str(root / "tgt")},
        "data": {"train": [str(root / "d.jsonl")], "seq_len": 64, "eval_fraction": 0.25},
        "method_options": {"ttt_steps": 2},
        "train": {"max_steps": 6, "batch_size": 4, "lr": 1e-2, "log_every": 2, "eval_every": 3, "save_every": 3,
                  "keep_checkpoints": 0, "output_dir": str(out), "progress": False,
                  "trackers": ["tensorboard", "wandb", "mlflow"], **train},
        "tracker_options": {"wandb": {"mode": "offline", "project": "trackers-test"}},
    }
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    res = run_cli(list(args), env=subprocess_env(), timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("trackers")
    make_target(root / "tgt")
    make_chat_data(root / "d.jsonl", n=32)
    out = root / "run"
    config = eagle3_config(root, out)
    res = cli("train", str(config))
    return {"root": root, "out": out, "config": config, "stderr": res.stderr}


def test_builtin_trackers_come_through_the_hook_and_are_listed(cli_env):
    trackers = draftsmith.get_registry().trackers()
    assert {"jsonl", "tensorboard", "wandb", "mlflow"} <= set(trackers)
    assert {t.distribution for t in trackers.values()} == {"draftsmith"}
    data = json.loads(run_cli(["plugins", "--json"], env=cli_env).stdout)
    listed = {t["name"]: t for t in data["trackers"]}
    assert listed["wandb"]["requires"] == ["wandb"] and "mode" in listed["wandb"]["options"]
    help_text = run_cli(["train", "--help"], env=cli_env).stdout
    for key in ("train.trackers", "train.tracker_errors", "tracker_options"):
        assert key in help_text


@pytest.mark.parametrize("setting, message", [
    ("train.trackers=[tensorbored]", "unknown tracker 'tensorbored' (train.trackers / tracker_options); installed "
                                     "trackers: jsonl, mlflow, tensorboard, wandb — a plugin adds more through the "
                                     "draftsmith_register_trackers hook"),
    ("tracker_options.wandb.projct=x", "tracker_options.wandb: unknown option(s) projct; the 'wandb' tracker takes: "
                                       "dir, entity, group, mode, name, notes, project, tags"),
])
def test_a_bad_tracker_setting_is_one_line_before_training(tmp_path, setting, message):
    target, data = make_target(tmp_path / "tgt"), make_chat_data(tmp_path / "d.jsonl", n=8)
    res = subprocess.run([sys.executable, str(launcher(tmp_path)), "train", "--method", "toy", "--target", str(target),
                          "--data", str(data), "--output-dir", str(tmp_path / "out"), "--set", setting],
                         capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert res.returncode == 1
    assert res.stderr.strip() == f"draftsmith: error: {message}"
    assert not (tmp_path / "out").exists()


def test_tensorboard_wandb_and_mlflow_log_what_metrics_jsonl_holds(run):
    want = expected_series(run["out"])
    for key in REQUIRED:
        assert key in want, key
    assert sorted(want["train/loss"]) == [2, 4, 6] and sorted(want["eval/tau_replay"]) == [3, 6]

    # TensorBoard, through tensorboard's own reader (float32 storage)
    tb = tensorboard_scalars(run["out"] / "tensorboard")
    assert_same_series({k: dict(v) for k, v in tb.items()}, want, rel=1e-6)
    config_text = "\n".join(tensorboard_text(run["out"] / "tensorboard", "config/text_summary"))
    assert "method: eagle3" in config_text and "ttt_steps: 2" in config_text

    # W&B offline: the run's transaction log, decoded with wandb's protobufs
    runs = wandb_run(run["out"])
    assert len(runs) == 1
    (wb,) = runs.values()
    assert wb["project"] == "trackers-test" and wb["run_id"] == json.loads(
        (run["out"] / "trackers.json").read_text())["wandb"]["run_id"]
    assert wb["config"]["train"]["lr"] == 1e-2 and wb["config"]["method"] == "eagle3"
    got: dict[str, dict[int, float]] = {}
    for row in wb["history"]:
        for key, value in row.items():
            if key.split("/")[0] in ("train", "eval"):
                got.setdefault(key, {})[row["trainer/step"]] = value
    assert_same_series(got, want, rel=1e-12)

    # MLflow: the local file store, through MlflowClient
    client = mlflow_client((run["out"] / "mlruns").resolve().as_uri())
    run_id = json.loads((run["out"] / "trackers.json").read_text())["mlflow"]["run_id"]
    info = client.get_run(run_id)
    assert info.info.status == "FINISHED" and info.info.run_name == "run"
    assert info.data.params["train.lr"] == "0.01" and info.data.params["method"] == "eagle3"
    for key, series in want.items():
        history = {m.step: m.value for m in client.get_metric_history(run_id, key)}
        assert history == pytest.approx(series, rel=1e-12), key
    config_file = Path(client.download_artifacts(run_id, "config.yaml", str(run["root"])))
    assert yaml.safe_load(config_file.read_text())["method_options"] == {"ttt_steps": 2}


def test_a_resumed_run_continues_the_same_tracker_runs(run, tmp_path):
    """Resuming from step 3 of a finished run redoes steps 4-6 (as after a kill): TensorBoard keeps one value per
    step (purge_step), W&B and MLflow continue the run ids stored in trackers.json."""
    out = tmp_path / "run"
    shutil.copytree(run["out"], out)
    before = json.loads((out / "trackers.json").read_text())
    config = eagle3_config(run["root"], out)
    cli("train", str(config), "--resume", str(out / "checkpoints" / "step_00000003"))
    assert json.loads((out / "trackers.json").read_text()) == before

    want = expected_series(out)
    steps = [r["step"] for r in read_metrics(out) if r.get("split") == "train"]
    assert steps == [2, 4, 6]  # metrics.jsonl: the redone records replace the old ones
    tb = tensorboard_scalars(out / "tensorboard")
    assert [s for s, _v in tb["train/loss"]] == [2, 4, 6]
    assert_same_series({k: dict(v) for k, v in tb.items()}, want, rel=1e-6)

    runs = wandb_run(out)
    assert list(runs) == [before["wandb"]["run_id"]] and runs[before["wandb"]["run_id"]]["logs"] == 2

    client = mlflow_client((out / "mlruns").resolve().as_uri())
    info = client.get_run(before["mlflow"]["run_id"])
    assert info.info.status == "FINISHED"
    history = client.get_metric_history(before["mlflow"]["run_id"], "train/loss")
    assert sorted(m.step for m in history) == [2, 4, 4, 6, 6]  # MLflow keeps both writes of a redone step
    latest = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
    assert latest == pytest.approx(want["train/loss"], rel=1e-12)


# -- failure rules (in process, the toy method: fast) -------------------------------------------------------------
class FailingTracker:
    """Fails in ``start`` (``fail_at=0``) or in the ``fail_at``-th ``log`` call."""

    logged: list = []

    def __init__(self, fail_at: int = 0) -> None:
        self.fail_at, self.calls = fail_at, 0

    def start(self, run) -> None:
        if self.fail_at == 0:
            raise ConnectionError("tracking server at 10.0.0.1:5000 refused the connection")

    def log(self, step, split, metrics) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OSError("disk full")
        FailingTracker.logged.append((step, split))

    def event(self, step, name, info) -> None:
        pass

    def finish(self, status) -> None:
        FailingTracker.logged.append(("finish", status))


@pytest.fixture
def small(tmp_path, toy):
    target, data = make_target(tmp_path / "tgt"), make_chat_data(tmp_path / "d.jsonl", n=16)
    draftsmith.register_tracker(TrackerSpec("flaky", FailingTracker, options={"fail_at": 0},
                                            requires=("flaky-client>=1",)))
    FailingTracker.logged = []
    return lambda **o: toy_config(tmp_path, target, data, **{"train.max_steps": 4, **o})


def test_a_tracker_that_fails_to_start_stops_the_run_before_the_first_step(small, tmp_path):
    with pytest.raises(TrainingError) as err:
        run_train(small(**{"train.trackers": ["flaky"]}))
    assert str(err.value) == ("tracker 'flaky' failed to start: ConnectionError: tracking server at 10.0.0.1:5000 "
                              "refused the connection (needs flaky-client>=1: pip install flaky-client>=1); set "
                              "train.tracker_errors=warn to train without it")
    assert read_metrics(tmp_path / "run") == []
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "final").exists()


def test_warn_trains_without_the_tracker_that_failed_to_start(small, tmp_path, capsys):
    result = run_train(small(**{"train.trackers": ["flaky", "tensorboard"], "train.tracker_errors": "warn"}))
    assert result.step == 4 and (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert "warning: tracker 'flaky' failed to start: ConnectionError" in capsys.readouterr().err
    assert [s for s, _v in tensorboard_scalars(tmp_path / "run" / "tensorboard")["train/loss"]] == [1, 2, 3, 4]


def test_a_tracker_failing_mid_run_is_dropped_once_and_training_completes(small, tmp_path, capsys):
    result = run_train(small(**{"train.trackers": ["flaky"], "tracker_options": {"flaky": {"fail_at": 3}}}))
    assert result.step == 4
    err = capsys.readouterr().err
    assert err.count("warning: tracker 'flaky' failed to log step 3: OSError: disk full") == 1
    assert "it is dropped for the rest of the run" in err
    assert FailingTracker.logged == [(1, "train"), (2, "train")]  # nothing after the failure, no finish
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4]  # jsonl unaffected


def test_a_missing_tracker_package_names_its_pip_requirement(small, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, as when it is not installed
    with pytest.raises(TrainingError, match=r"tracker 'wandb' failed to start: ModuleNotFoundError: .*wandb.* "
                                            r"\(needs wandb: pip install wandb\)"):
        run_train(small(**{"train.trackers": ["wandb"]}))


def test_a_tracker_that_cannot_start_is_one_line_from_the_cli(tmp_path):
    target, data = make_target(tmp_path / "tgt"), make_chat_data(tmp_path / "d.jsonl", n=8)
    res = subprocess.run([sys.executable, str(launcher(tmp_path)), "train", "--method", "toy", "--target", str(target),
                          "--data", str(data), "--output-dir", str(tmp_path / "out"), "--max-steps", "2",
                          "--set", "train.trackers=[mlflow]", "--set", "tracker_options.mlflow.tracking_uri=bogus://x"],
                         capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("draftsmith: error: tracker 'mlflow' failed to start: ") and "bogus" in last
    assert "Traceback" not in res.stderr


# -- a third party's tracker ----------------------------------------------------------------------------------------
def test_a_third_party_tracker_from_an_installed_distribution(tmp_path, toy, monkeypatch):
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--target", str(site), str(REPO / "examples" / "draftsmith-plugin-template")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    monkeypatch.syspath_prepend(str(site))
    import importlib

    importlib.invalidate_caches()
    draftsmith.reset_plugins()
    from support.train import register_toy

    register_toy()
    spec = draftsmith.get_registry().get_tracker("csv")
    assert spec.distribution == "draftsmith-example-plugin"
    target, data = make_target(tmp_path / "tgt"), make_chat_data(tmp_path / "d.jsonl", n=16)
    run_train(toy_config(tmp_path, target, data, **{"train.max_steps": 3, "train.trackers": ["csv"],
                                                    "tracker_options": {"csv": {"file": "s.csv"}}}))
    rows = (tmp_path / "run" / "s.csv").read_text().splitlines()
    assert rows[0] == "step,split,name,value"
    want = expected_series(tmp_path / "run")
    got: dict[str, dict[int, float]] = {}
    for line in rows[1:]:
        step, split, name, value = line.split(",")
        got.setdefault(f"{split}/{name}", {})[int(step)] = float(value)
    assert got == want
