import json
import sys
import subprocess

import pytest

from support.cli import run_cli

SUBCOMMANDS = ["list-drafts", "plugins", "resolve", "train", "prepare-features", "import-features", "inspect-data",
               "eval", "regenerate", "export", "check-export", "report"]


def test_the_help_test_covers_every_subcommand():
    from draftsmith.cli import COMMANDS

    assert sorted(SUBCOMMANDS) == sorted(COMMANDS)


def test_list_drafts_table(cli_env):
    out = run_cli(["list-drafts"], env=cli_env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["METHOD", "ARCHITECTURE", "DRAFT", "CLASS", "PLUGIN", "VERSION", "STATUS"]
    assert any(l.split()[:2] == ["eagle3", "GptOssForCausalLM"] and l.split()[-1] == "ok" for l in lines)
    assert "eagle2 -> eagle1 drafts" in out.stdout


def test_list_drafts_json_shape_and_filters(cli_env):
    out = run_cli(["list-drafts", "--json"], env=cli_env)
    data = json.loads(out.stdout)
    assert set(data) == {"drafts", "broken_plugins"} and data["broken_plugins"] == []
    assert set(data["drafts"][0]) == {"method", "architecture", "draft_class", "plugin", "distribution",
                                      "version", "status"}
    methods = {d["method"] for d in data["drafts"]}
    assert {"eagle1", "eagle3", "dflash", "dspark"} <= methods
    only = json.loads(run_cli(["list-drafts", "--json", "--method", "dspark", "--architecture",
                               "Qwen3MoeForCausalLM"], env=cli_env).stdout)["drafts"]
    assert [(d["method"], d["architecture"], d["distribution"]) for d in only] == [
        ("dspark", "Qwen3MoeForCausalLM", "draftsmith-dspark")]


def test_standalone_list_drafts_script(cli_env):
    exe = subprocess.run([sys.executable, "-c", "import shutil; print(shutil.which('list-drafts') or '')"],
                         capture_output=True, text=True).stdout.strip()
    assert exe, "the list-drafts console script is not installed"
    out = subprocess.run([exe, "--json"], capture_output=True, text=True, env=cli_env)
    assert out.returncode == 0 and json.loads(out.stdout)["drafts"]


def test_list_drafts_does_not_import_torch_or_transformers(cli_env):
    code = ("import sys; from draftsmith.cli import run_command; rc = run_command(['list-drafts', '--json']); "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "sys.stderr.write('HEAVY=' + ','.join(heavy)); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env)
    assert out.returncode == 0
    assert "HEAVY=" in out.stderr and out.stderr.split("HEAVY=")[1].strip() == ""


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_subcommand_help_works_without_torch(cli_env, sub):
    code = ("import sys; from draftsmith.cli import run_command\n"
            "try:\n    run_command([%r, '--help'])\nexcept SystemExit as e:\n    code = e.code\n"
            "sys.stderr.write('HEAVY=' + ','.join(m for m in ('torch', 'transformers') if m in sys.modules))\n"
            "sys.exit(code)" % sub)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env)
    if "invalid choice" in out.stderr:
        pytest.fail(f"subcommand {sub} is not available")
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
    assert out.stderr.split("HEAVY=")[1].strip() == ""


def test_plugins_json(cli_env):
    data = json.loads(run_cli(["plugins", "--json"], env=cli_env).stdout)
    by_name = {p["plugin"]: p for p in data["plugins"]}
    assert by_name["eagle"]["methods"] == ["eagle1", "eagle2", "eagle3"]
    assert by_name["dflash"]["distribution"] == "draftsmith-dflash"
    assert "draftsmith_register_drafts" in by_name["dspark"]["hooks"]
    assert {m["name"] for m in data["methods"]} >= {"eagle1", "eagle2", "eagle3", "dflash", "dspark"}


def test_resolve_architecture(cli_env):
    out = run_cli(["resolve", "--method", "eagle2", "--architecture", "Unknown", "--architecture",
                   "MistralForCausalLM", "--json"], env=cli_env)
    info = json.loads(out.stdout)
    assert info["draft_method"] == "eagle1"
    assert info["draft_class"] == "draftsmith_eagle.draft_llama_v12:LlamaEagleDraftModel"


@pytest.mark.parametrize("args, expected", [
    (["resolve", "--method", "medusa2", "--architecture", "LlamaForCausalLM"], "unknown draft method 'medusa2'"),
    (["resolve", "--method", "dspark", "--architecture", "DeepseekV4ForCausalLM"],
     "no 'dspark' draft spec registered for any of ['DeepseekV4ForCausalLM']"),
    (["resolve", "--method", "eagle3", "--target", "/nonexistent/model"], "does not exist"),
])
def test_bad_input_is_one_clear_line(cli_env, args, expected):
    out = run_cli(args, env=cli_env)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("draftsmith: error:") and expected in lines[0], out.stderr


def test_resolve_target_without_config_or_architectures(cli_env, tmp_path):
    out = run_cli(["resolve", "--method", "eagle3", "--target", str(tmp_path)], env=cli_env)
    assert out.returncode != 0 and "has no config.json" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    out = run_cli(["resolve", "--method", "eagle3", "--target", str(tmp_path)], env=cli_env)
    assert out.returncode != 0 and "no 'architectures' list" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_broken_plugin_listed_and_exit_zero(tmp_path, cli_env):
    # A real (installed-looking) distribution on the path whose plugin module raises at import.
    dist = tmp_path / "acme_broken-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-broken\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text("[draftsmith]\nacme = acme_broken_plugin\n")
    (tmp_path / "acme_broken_plugin.py").write_text("raise ImportError('acme needs libfoo')\n")
    env = dict(cli_env, PYTHONPATH=str(tmp_path))
    out = run_cli(["list-drafts", "--json"], env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["broken_plugins"] == [{"plugin": "acme", "distribution": "acme-broken", "version": "1.2",
                                       "error": "failed to import: ImportError: acme needs libfoo"}]
    assert {d["method"] for d in data["drafts"]} >= {"eagle3", "dflash", "dspark"}
    table = run_cli(["list-drafts"], env=env)
    assert table.returncode == 0 and "broken plugin acme (acme-broken 1.2)" in table.stdout
    strict = run_cli(["list-drafts"], env=dict(env, DRAFTSMITH_STRICT_PLUGINS="1"))
    assert strict.returncode != 0 and "acme-broken" in strict.stderr and "libfoo" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_conflicting_distributions_reported_then_raised(tmp_path, cli_env):
    for name in ("alpha", "beta"):
        dist = tmp_path / f"{name}_drafts-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-drafts\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[draftsmith]\n{name} = {name}_drafts_plugin\n")
        (tmp_path / f"{name}_drafts_plugin.py").write_text(
            "import draftsmith\n@draftsmith.hookimpl\ndef draftsmith_register_drafts(registry):\n"
            f"    registry.register(draftsmith.DraftSpec(method='eagle3', architectures=('OlmoForCausalLM',), "
            f"draft_cls='{name}_drafts_plugin:Draft'))\n")
    env = dict(cli_env, PYTHONPATH=str(tmp_path))
    rows = json.loads(run_cli(["list-drafts", "--json", "--architecture", "OlmoForCausalLM"], env=env).stdout)
    assert sorted((d["distribution"], d["status"]) for d in rows["drafts"]) == [
        ("alpha-drafts", "conflict"), ("beta-drafts", "conflict")]
    out = run_cli(["resolve", "--method", "eagle3", "--architecture", "OlmoForCausalLM"], env=env)
    assert out.returncode != 0 and "alpha-drafts 1.0" in out.stderr and "beta-drafts 1.0" in out.stderr
    ok = run_cli(["resolve", "--method", "eagle3", "--architecture", "LlamaForCausalLM"], env=env)
    assert ok.returncode == 0, ok.stderr
