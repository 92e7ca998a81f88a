"""`draftsmith report`: the plotted series are the metrics.jsonl values (per-position keys of every method
normalised to 1-based k, non-finite values as gaps, resumes marked), grouped eval bars are each file's
conditional acceptance, the page is self-contained (every PNG embedded as a data URI, valid and not blank), runs
with one record or no eval still report, bad input is one line and exit 1; and end to end on a real tiny EAGLE-3
run with a real `draftsmith eval --json` file."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import math
import subprocess
import sys

import pytest

from support import REPO
from support.cli import run_cli, subprocess_env

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from draftsmith.report import PLOT_FILES, build_report, plots  # noqa: E402
from draftsmith.report.series import draft_name, read_evals, read_run  # noqa: E402


# -- a realistic run written by hand (the shapes of real eagle3 / dspark records) ---------------------------------
def _mean(values):
    m = sum(map(float, values)) / len(values)
    return m if math.isfinite(m) else str(m)  # as the jsonl tracker writes a non-finite value


def _train(step, loss, lr, accs, rates=None, tps=1000.0):
    rec = {"step": step, "split": "train", "lr": lr, "epoch": 0}
    rec.update({f"acc_{k}": a for k, a in enumerate(accs)})
    if rates:
        rec.update({f"accept_rate@{k + 1}": r for k, r in enumerate(rates)})
    rec.update({"accuracy": _mean(accs), "tau_sim": 1 + sum(accs), "loss": loss, "grad_norm": 2.0,
                "tokens_per_s": tps, "supervised_tokens": 1262.0, "target_time_share": 0.18})
    return rec


def _eval(step, loss, accs, replay):
    rec = {"step": step, "split": "eval"}
    rec.update({f"acc_{k}": a for k, a in enumerate(accs)})
    rec.update({"accuracy": _mean(accs), "tau_sim": 1 + sum(accs), "loss": loss, "tokens": 1543.0,
                "tau_replay": replay, "replay_rounds": 1142, "replay_sequences": 16, "replay_truncated": 0})
    return rec


RECORDS = [
    _train(2, 8.07, 0.00188, [0.05, 0.049, 0.042], [0.14, 0.13, 0.12], tps=961.3),
    _eval(3, 6.48, [0.35, 0.16, 0.16], 1.33),
    {**_train(4, "nan", 0.0011, [0.26, 0.17, 0.15], [0.19, 0.19, 0.18], tps="inf"), "acc_2": "nan"},
    {"event": "resume", "step": 4, "checkpoint": "/runs/x/checkpoints/step_00000004"},
    _train(6, 6.53, 0.00032, [0.30, 0.20, 0.125], [0.18, 0.17, 0.16], tps=2145.2),
    _eval(6, 5.94, [0.43, 0.27, 0.17], 1.65),
    _train(8, 6.1, 0.0002, [0.33, 0.21, 0.13], [0.2, 0.19, 0.17], tps=2100.0),
]
CONFIG = ("method: eagle3\ntarget:\n  path: models/<script>alert(1)</script>\ndata:\n  train: [d.jsonl]\n"
          "  seq_len: 512\ndraft:\n  num_draft_layers: 1\nmethod_options:\n  ttt_steps: 3\ntrain:\n  max_steps: 10\n"
          "  batch_size: 8\n  lr: 0.002\n")


def _eval_json(path, draft, tau, ca, speedup, method="eagle3", checked=True):
    """A file shaped like `draftsmith eval --json` (commands/eval.py run + EvalReport.to_dict)."""
    info = {"method": method, "drafter": "draftsmith_eagle.drafting:EagleChainDrafter", "draft": draft,
            "target": "examples/tiny-target", "prompts": 8, "device": "cpu", "dtype": "float32",
            "max_new_tokens": 48, "drafter_options": {}, "num_draft_tokens": 7,
            "sampling": {"temperature": 0.0, "top_p": 1.0, "top_k": 0}, "generations": 8, "generated_tokens": 380,
            "rounds": 200, "tau": tau, "conditional_acceptance": ca, "acceptance_offered": [200] * len(ca),
            "drafted_tokens": 1400, "accepted_tokens": 180, "acceptance_rate": 0.13, "tokens_per_second": 120.0,
            "total_time_s": 3.1, "prefill_time_s": 0.1, "draft_time_per_round_s": 0.005,
            "verify_time_per_round_s": 0.005, "target_tokens_per_second": 270.0, "target_generated_tokens": 380,
            "speedup": speedup, "speedup_bound": speedup * 1.1,
            "lossless": {"checked": checked, "ok": True if checked else None, "compared_tokens": 380,
                         "first_mismatch": None}}
    path.write_text(json.dumps(info, indent=2))
    return path


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (d / "config.yaml").write_text(CONFIG)
    return d


@pytest.fixture
def eval_files(tmp_path):
    return [_eval_json(tmp_path / "a.json", "/runs/e3/final", 2.1, [0.6, 0.4, 0.3], 1.3),
            _eval_json(tmp_path / "b.json", "/other/e3/final", 1.7, [0.5, 0.2], float("nan"), method="dspark",
                       checked=False),
            _eval_json(tmp_path / "c.json", "/runs/e3/checkpoints/step_00000030", 1.4, [0.3], 0.9)]


def _num(v):
    return float(v)  # float("nan") / float("inf") parse the jsonl tracker's strings


def _expected(split, key):
    """(steps, values) of ``key`` in RECORDS' ``split`` records, non-finite as NaN (how the plots draw them)."""
    pts = [(r["step"], _num(r[key])) for r in RECORDS if r.get("split") == split and key in r]
    return [s for s, _ in pts], [v if math.isfinite(v) else math.nan for _, v in pts]


def _same(a, b):
    return len(a) == len(b) and all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y) for x, y in zip(a, b))


def _data_lines(fig):
    return [line for ax in fig.axes for line in ax.get_lines()
            if line.get_gid() and not line.get_gid().startswith("resume/")]


# -- series and plots --------------------------------------------------------------------------------------------
def test_series_normalise_positions_and_non_finite(run_dir):
    run = read_run(run_dir)
    assert run.method == "eagle3" and run.max_steps == 10 and run.last_step == 8
    assert [e["step"] for e in run.resumes] == [4]
    acc = run.acceptance("train")
    assert list(acc) == ["acc_k", "accept_rate@k"]
    assert list(acc["acc_k"]) == [1, 2, 3] and acc["acc_k"][1].key == "acc_0"  # 0-based acc_0 is position 1
    assert list(acc["accept_rate@k"]) == [1, 2, 3] and acc["accept_rate@k"][1].key == "accept_rate@1"
    assert list(run.acceptance("eval")) == ["acc_k"]
    loss = run.series("train", "loss")
    assert loss.steps == [2, 4, 6, 8] and math.isnan(loss.values[1]) and loss.non_finite == 1
    assert math.isinf(run.series("train", "tokens_per_s").values[1])


def test_every_plotted_line_is_the_metrics(run_dir):
    run = read_run(run_dir)
    figures = {name: make(run) for name, make in (("loss", plots.loss_figure), ("tau", plots.tau_figure),
                                                  ("acceptance", plots.acceptance_figure),
                                                  ("throughput", plots.throughput_figure))}
    gids = {name: {line.get_gid() for line in _data_lines(fig)} for name, fig in figures.items()}
    assert gids["loss"] == {"train/loss", "eval/loss", "train/lr"}
    assert gids["tau"] == {"train/tau_sim", "eval/tau_sim", "eval/tau_replay"}
    assert gids["throughput"] == {"train/tokens_per_s", "train/target_time_share"}
    assert gids["acceptance"] == ({f"train/acc_{k}" for k in range(3)} | {f"eval/acc_{k}" for k in range(3)}
                                  | {f"train/accept_rate@{k}" for k in (1, 2, 3)})
    checked = 0
    for fig in figures.values():
        for line in _data_lines(fig):
            split, key = line.get_gid().split("/", 1)
            steps, values = _expected(split, key)
            xy = line.get_xydata()
            assert list(xy[:, 0]) == steps, line.get_gid()
            assert _same(list(xy[:, 1]), values), (line.get_gid(), xy, values)
            checked += 1
    assert checked == 3 + 3 + 2 + 9
    # positions are labelled 1-based, and the resume of step 4 is a vertical line on every run plot
    acc_labels = {line.get_label() for line in _data_lines(figures["acceptance"])}
    assert acc_labels == {"k=1", "k=2", "k=3"}
    for fig in figures.values():
        resumes = [line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == "resume/4"]
        assert resumes and all(set(line.get_xdata()) == {4} for line in resumes)


def test_eval_bars_are_each_files_numbers(eval_files):
    evals = read_evals(eval_files)
    assert [e.label for e in evals] == ["e3 (eagle3)", "e3 (dspark)", "e3@30"]
    fig = plots.eval_acceptance_figure(evals)
    containers = fig.axes[0].containers
    assert [c.get_label() for c in containers] == [e.label for e in evals]
    for container, e in zip(containers, evals):
        assert [p.get_height() for p in container] == pytest.approx(e.conditional_acceptance)
        xs = [p.get_x() + p.get_width() / 2 for p in container]
        assert [round(x) for x in xs] == list(range(1, len(e.conditional_acceptance) + 1))  # group k at x = k
    speed = plots.eval_speed_figure(evals)
    tau_bars, speed_bars = speed.axes[0].containers[0], speed.axes[1].containers[0]
    assert [p.get_height() for p in tau_bars] == pytest.approx([2.1, 1.7, 1.4])
    heights = [p.get_height() for p in speed_bars]
    assert heights[0] == pytest.approx(1.3) and math.isnan(heights[1]) and heights[2] == pytest.approx(0.9)
    assert [t.get_text() for t in speed.axes[0].get_xticklabels()] == [e.label for e in evals]


def test_draft_names():
    assert draft_name("runs/e3/final") == "e3"
    assert draft_name("/tmp/rep-run/final/") == "rep-run"
    assert draft_name("runs/e3/checkpoints/step_00000030") == "e3@30"
    assert draft_name("exported/dspark-vllm") == "dspark-vllm"
    assert draft_name("final") == "" and draft_name(None) == ""


# -- the page ----------------------------------------------------------------------------------------------------
class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _parse(index):
    page = _Page()
    page.feed(index.read_text(encoding="utf-8"))
    page.close()
    return page, " ".join(page.text)


def _check_png(data: bytes):
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG" and img.width > 100 and img.height > 100
    assert len(img.convert("RGB").getcolors(maxcolors=1 << 24)) > 1  # not blank


def _check_images(index, names):
    page, _ = _parse(index)
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in page.images]
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    files = {name: (index.parent / name).read_bytes() for name in names}
    assert sorted(embedded) == sorted(files.values())  # each PNG file is embedded, nothing else is
    for data in embedded:
        _check_png(data)
    assert {p for p in PLOT_FILES if (index.parent / p).is_file()} == set(names)


def test_page_is_self_contained_and_escaped(run_dir, eval_files):
    index = build_report(run_dir, evals=eval_files)
    assert index == run_dir / "report" / "index.html"
    _check_images(index, PLOT_FILES)
    page, text = _parse(index)
    raw = index.read_text(encoding="utf-8")
    assert "<script>" not in raw and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw  # the target path, escaped
    assert "script" not in page.tags and "link" not in page.tags  # nothing loaded from elsewhere
    for needle in ("eagle3", "steps 8 of 10", "resume", "Final metrics", "train (step 8)", "eval (step 6)",
                   "acc_k (k = 1…3)", "accept_rate@k (k = 1…3)", "Evaluations", "e3 (dspark)", "e3@30",
                   "passed", "not checked", "1.30×", "n/a", "0.60 · 0.40 · 0.30", "train.batch_size",
                   "method_options.ttt_steps"):
        assert needle in text, needle
    # a second report without --eval drops the eval plots (files too), and says so
    again = build_report(run_dir, out=run_dir / "report")
    _check_images(again, [p for p in PLOT_FILES if not p.startswith("eval_")])
    assert "No eval files" in _parse(again)[1]


def test_one_record_no_eval_no_config(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "metrics.jsonl").write_text(json.dumps(_train(1, 9.0, 0.001, [0.1, 0.05])) + "\n"
                                     + '{"step": 2, "split": "train", "loss": 8.')  # being written
    index = build_report(d, out=tmp_path / "out")
    _check_images(index, ["loss.png", "throughput.png", "acceptance.png", "tau.png"])
    _, text = _parse(index)
    for needle in ("No eval records", "config.yaml not found", "incomplete last line skipped", "train (step 1)"):
        assert needle in text, needle


def test_dflash_and_dspark_keys(tmp_path):
    """DFlash: acc_k + accept_len + tau_sim; DSpark adds accept_rate@k and tau_analytic (records as they log)."""
    d = tmp_path / "r"
    d.mkdir()
    recs = [{"step": 2, "split": "train", "lr": 0.001, "acc_0": 0.06, "acc_1": 0.064, "accept_len": 1.05,
             "accuracy": 0.06, "tau_sim": 1.05, "tau_analytic": 1.17, "accept_rate@1": 0.14, "accept_rate@2": 0.13,
             "loss": 7.5, "grad_norm": 47.2, "tokens_per_s": 957.0},
            {"step": 3, "split": "eval", "acc_0": 0.07, "acc_1": 0.066, "accept_len": 1.06, "tau_sim": 1.06,
             "tau_analytic": 1.17, "loss": 5.2, "tau_replay": 1.08}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    run = read_run(d)
    tau = {line.get_gid(): list(line.get_ydata()) for line in _data_lines(plots.tau_figure(run))}
    assert tau == {"train/tau_sim": [1.05], "eval/tau_sim": [1.06], "eval/tau_replay": [1.08],
                   "train/tau_analytic": [1.17], "eval/tau_analytic": [1.17]}
    acc = plots.acceptance_figure(run)
    titles = [ax.get_title() for ax in acc.axes]
    assert titles == ["train: acc_k", "eval: acc_k", "train: accept_rate@k", "eval: accept_rate@k"]
    assert {line.get_gid() for line in _data_lines(acc)} == {"train/acc_0", "train/acc_1", "eval/acc_0",
                                                             "eval/acc_1", "train/accept_rate@1",
                                                             "train/accept_rate@2"}


# -- the command: bad input, imports -------------------------------------------------------------------------------
def _bad_inputs(tmp_path, run_dir):
    bad_line = tmp_path / "bad"
    bad_line.mkdir()
    (bad_line / "metrics.jsonl").write_text(json.dumps(RECORDS[0]) + "\n{oops\n" + json.dumps(RECORDS[1]) + "\n")
    no_metrics = tmp_path / "empty"
    no_metrics.mkdir()
    bad_eval = tmp_path / "bad.json"
    bad_eval.write_text("eval: 100%|████| 4/4\n{")
    not_eval = tmp_path / "other.json"
    not_eval.write_text('{"drafts": []}')
    return [
        ([str(tmp_path / "nope")], "does not exist"),
        ([str(no_metrics)], "no metrics.jsonl"),
        ([str(bad_line)], f"{bad_line / 'metrics.jsonl'}:2: not valid JSON"),
        ([str(run_dir), "--eval", str(bad_eval)], f"{bad_eval}: not valid JSON"),
        ([str(run_dir), "--eval", str(not_eval)], "not a `draftsmith eval --json` report (missing 'tau'"),
        ([str(run_dir), "--eval", str(tmp_path / "missing.json")], "does not exist"),
    ]


def test_bad_input_is_one_line(tmp_path, run_dir):
    # one interpreter for every case (each a fresh parse), the CLI's own error path
    cases = _bad_inputs(tmp_path, run_dir)
    code = ("import sys, json, io, contextlib\nfrom draftsmith.cli import run_command\nout = []\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        rc = run_command(['report', *args])\n"
            "    out.append([rc, err.getvalue()])\n"
            "print(json.dumps(out))\n")
    res = subprocess.run([sys.executable, "-c", code, json.dumps([a for a, _ in cases])], capture_output=True,
                         text=True, env=subprocess_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    for (args, expected), (rc, err) in zip(cases, json.loads(res.stdout)):
        assert rc == 1, (args, err)
        assert err.startswith("draftsmith: error: ") and err.count("\n") == 1, err
        assert expected in err and "Traceback" not in err, (expected, err)


def test_without_matplotlib_one_line_and_help_still_works(run_dir):
    code = ("import sys\nsys.modules['matplotlib'] = None  # as if not installed\n"
            "from draftsmith.cli import main\nmain(sys.argv[1:])\n")
    res = subprocess.run([sys.executable, "-c", code, "report", str(run_dir)], capture_output=True, text=True,
                         env=subprocess_env(), timeout=60)
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "needs matplotlib" in res.stderr and "pip install 'draftsmith[report]'" in res.stderr
    res = subprocess.run([sys.executable, "-c", code, "report", "--help"], capture_output=True, text=True,
                         env=subprocess_env(), timeout=60)
    assert res.returncode == 0 and "--eval EVAL.json" in res.stdout and "RUN_DIR" in res.stdout, res.stderr


def test_report_never_imports_torch(run_dir, eval_files):
    code = ("import sys\nfrom draftsmith.cli import run_command\nrc = run_command(sys.argv[1:])\n"
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy)); sys.exit(rc)\n")
    res = subprocess.run([sys.executable, "-c", code, "report", str(run_dir), "--eval", str(eval_files[0])],
                         capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("HEAVY=") and "6 plots" in res.stdout


# -- end to end: a real tiny run and a real eval file ----------------------------------------------------------------
@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-e2e")
    env = subprocess_env()
    train = run_cli(["train", "examples/configs/eagle3-tiny.yaml", "--max-steps", "6", "--set", "train.log_every=2",
                     "--set", "train.eval_every=3", "--set", "train.eval_batches=2", "--set", "data.max_samples=64",
                     "--set", "train.progress=false", "--output-dir", str(root / "run")], env=env, cwd=REPO)
    assert train.returncode == 0, train.stderr[-3000:]
    ev = run_cli(["eval", "--target", "examples/tiny-target", "--draft", str(root / "run" / "final"), "--prompts",
                  "examples/data/prompts-heldout.jsonl", "--max-prompts", "2", "--max-new-tokens", "16",
                  "--device", "cpu", "--json"], env=env, cwd=REPO)
    assert ev.returncode == 0, ev.stderr[-3000:]
    (root / "e3.json").write_text(ev.stdout)
    return root


def test_end_to_end_real_run(real_run):
    run_dir, eval_file = real_run / "run", real_run / "e3.json"
    res = run_cli(["report", str(run_dir), "--eval", str(eval_file)], env=subprocess_env(), cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    index = run_dir / "report" / "index.html"
    assert str(index) in res.stdout
    _check_images(index, PLOT_FILES)
    info = json.loads(eval_file.read_text())
    _, text = _parse(index)
    assert "eagle3" in text and "examples/tiny-target" in text and "steps 6 of 6" in text
    assert f"{info['tau']:.4g}" in text  # the eval table carries the file's τ
    # the figures of the real files: train loss is metrics.jsonl's, the bars are the file's acceptance
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    run = read_run(run_dir)
    (loss,) = [line for line in _data_lines(plots.loss_figure(run)) if line.get_gid() == "train/loss"]
    train = [r for r in records if r.get("split") == "train"]
    assert list(loss.get_xdata()) == [r["step"] for r in train] == [2, 4, 6]
    assert list(loss.get_ydata()) == pytest.approx([r["loss"] for r in train])
    acc = {line.get_gid(): list(line.get_ydata()) for line in _data_lines(plots.acceptance_figure(run))}
    assert acc["eval/acc_0"] == pytest.approx([r["acc_0"] for r in records if r.get("split") == "eval"])
    (bars,) = plots.eval_acceptance_figure(read_evals([eval_file])).axes[0].containers
    assert [b.get_height() for b in bars] == pytest.approx(info["conditional_acceptance"])
