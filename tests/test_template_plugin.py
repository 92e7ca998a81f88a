"""The third-party story: pip-install the template plugin into a temporary directory and use it from the CLI."""

import json
import shutil
import subprocess
import sys

import pytest

from support import REPO
from support.cli import run_cli


@pytest.fixture(scope="module")
def installed_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("template")
    src = root / "src"
    shutil.copytree(REPO / "examples" / "draftsmith-plugin-template", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = root / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(src)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert any(target.glob("draftsmith_example_plugin-*.dist-info"))
    return target


def test_template_entries_appear_resolve_and_disappear(installed_template, cli_env):
    env = dict(cli_env, PYTHONPATH=str(installed_template), DRAFTSMITH_STRICT_PLUGINS="1")
    data = json.loads(run_cli(["list-drafts", "--json"], env=env).stdout)
    rows = {(d["method"], d["architecture"]): d for d in data["drafts"]}
    olmo = rows[("eagle3", "OlmoForCausalLM")]
    assert olmo["distribution"] == "draftsmith-example-plugin" and olmo["plugin"] == "example"
    assert olmo["draft_class"] == "draftsmith_eagle.draft_llama:LlamaEagle3DraftModel"
    assert rows[("medusa", "Qwen3ForCausalLM")]["draft_class"] == \
        "draftsmith_example_plugin.draft_medusa:MedusaDraftModel"
    assert data["broken_plugins"] == []

    out = run_cli(["resolve", "--method", "eagle3", "--architecture", "CohereForCausalLM", "--json"], env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["distribution"] == "draftsmith-example-plugin"
    plugins = json.loads(run_cli(["plugins", "--json"], env=env).stdout)
    assert any(p["plugin"] == "example" and p["methods"] == ["medusa"] for p in plugins["plugins"])

    # "Uninstalled": without the directory on the path its entries are gone and the error says what exists.
    gone = run_cli(["resolve", "--method", "eagle3", "--architecture", "OlmoForCausalLM"], env=cli_env)
    assert gone.returncode != 0 and "Supported architectures for 'eagle3'" in gone.stderr
    assert "OlmoForCausalLM" not in json.dumps(json.loads(run_cli(["list-drafts", "--json"], env=cli_env).stdout))
    unknown = run_cli(["resolve", "--method", "medusa", "--architecture", "Qwen3ForCausalLM"], env=cli_env)
    assert unknown.returncode != 0 and "unknown draft method 'medusa'" in unknown.stderr


def test_template_medusa_method_trains_and_drafts(installed_template, monkeypatch):
    """The template's new method is real: its objective's loss falls and its drafter proposes tokens."""
    monkeypatch.syspath_prepend(str(installed_template))
    import importlib
    importlib.invalidate_caches()
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    import draftsmith
    from draftsmith.method import TargetRequest
    from draftsmith.target import run_target, target_heads

    torch.manual_seed(0)
    target = AutoModelForCausalLM.from_config(Qwen3Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8)).eval()
    target.config.architectures = ["Qwen3ForCausalLM"]
    spec = draftsmith.resolve_draft_spec("medusa", target.config.architectures)
    draft = spec.build(target.config, num_heads=2)
    method = draftsmith.get_method("medusa")
    heads = target_heads(target)
    objective = method.load_objective()(draft, heads)
    ids = torch.randint(0, 64, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": torch.ones_like(ids)}
    features, _ = run_target(target, objective.target_request(), ids)
    opt = torch.optim.Adam(draft.parameters(), lr=3e-2)
    losses = []
    for _ in range(15):
        out = objective(batch, features)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] * 0.8
    drafter = method.load_drafter()(draft, heads)
    assert drafter.target_request() == TargetRequest(final_hidden=True)
    drafter.start(ids[:1, :5], run_target(target, drafter.target_request(), ids[:1, :5])[0])
    proposal = drafter.propose(anchor=int(ids[0, 5]), num_tokens=2)
    assert proposal.tokens.shape == (2,) and proposal.tokens.dtype == torch.long


def test_template_adds_a_format_that_exports_and_reads_back(installed_template, cli_env, monkeypatch, tmp_path):
    """A third-party format through draftsmith_register_formats: listed, written by `draftsmith export`, detected
    and read back by draftsmith.load_draft (no draftsmith metadata in the directory)."""
    monkeypatch.syspath_prepend(str(installed_template))
    import importlib
    importlib.invalidate_caches()
    import torch
    from transformers import Qwen3Config

    import draftsmith
    from draftsmith.checkpoint import save_draft
    from draftsmith.testing import scramble

    draftsmith.reset_plugins()
    env = dict(cli_env, PYTHONPATH=str(installed_template), DRAFTSMITH_STRICT_PLUGINS="1")
    methods = {m["name"]: m for m in json.loads(run_cli(["plugins", "--json"], env=env).stdout)["methods"]}
    assert methods["medusa"]["export_formats"] == ["heads", "native"] and methods["medusa"]["read_formats"] == ["heads"]
    heads = next(f for f in methods["medusa"]["formats"] if f["name"] == "heads")
    assert heads["distribution"] == "draftsmith-example-plugin" and heads["reads"] and heads["writes"]

    tc = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=8)
    tc.architectures = ["Qwen3ForCausalLM"]
    draft = scramble(draftsmith.resolve_draft_spec("medusa", tc.architectures).build(tc, num_heads=2), 0)
    save_draft(draft, tmp_path / "native")
    res = run_cli(["export", "--draft", str(tmp_path / "native"), "--format", "heads", "--out", str(tmp_path / "h")],
                  env=env)
    assert res.returncode == 0, res.stderr
    assert "draftsmith" not in json.loads((tmp_path / "h" / "config.json").read_text())
    read = draftsmith.load_draft(tmp_path / "h")
    assert draftsmith.checkpoint.read_draft_metadata(tmp_path / "h")["format"] == "heads"
    ours, theirs = draft.state_dict(), read.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    draftsmith.reset_plugins()
