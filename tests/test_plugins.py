import subprocess
import sys

import pytest

import draftsmith
from draftsmith import PluginLoadError
from draftsmith.plugins import PluginManager

from support.fake_plugins import FakeEntryPoint, write_module

GOOD = """
import draftsmith

@draftsmith.hookimpl
def draftsmith_register_drafts(registry):
    registry.register(draftsmith.DraftSpec(method="good", architectures=("GoodArch",), draft_cls="x.y:Good"))

@draftsmith.hookimpl
def draftsmith_register_methods(registry):
    registry.register_method(draftsmith.MethodSpec(name="good", summary="a good method"))
"""

BROKEN_MODULES = {
    "raises_at_import": ("raise RuntimeError('boom at import')", "failed to import: RuntimeError: boom at import"),
    "wrong_signature": ("""
import draftsmith

@draftsmith.hookimpl
def draftsmith_register_drafts(registry, extra_arg):
    pass
""", "failed to register"),
    "unknown_hook": ("""
import draftsmith

@draftsmith.hookimpl
def draftsmith_register_everything(registry):
    pass
""", "unknown hook"),
    "registers_garbage": ("""
import draftsmith

@draftsmith.hookimpl
def draftsmith_register_drafts(registry):
    registry.register({"method": "x"})
""", "TypeError: registry.register() expects a DraftSpec"),
    "format_without_detect": ("""
import draftsmith

@draftsmith.hookimpl
def draftsmith_register_formats(registry):
    registry.register_format(draftsmith.FormatSpec("good", "engine", reader="x:read"))
""", "ValueError: format good/engine has a reader but no detect function"),
    "registers_a_dict_format": ("""
import draftsmith

@draftsmith.hookimpl
def draftsmith_register_formats(registry):
    registry.register_format({"method": "good", "name": "engine"})
""", "TypeError: registry.register_format() expects a draftsmith.formats.FormatSpec"),
    "hook_raises": ("""
import draftsmith

@draftsmith.hookimpl
def draftsmith_register_drafts(registry):
    registry.register(draftsmith.DraftSpec(method="half", architectures=("H",), draft_cls="x:Y"))
    raise ValueError("second registration failed")
""", "ValueError: second registration failed"),
}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "good_plugin", GOOD)
    return tmp_path


def test_good_plugin_registers_with_provenance(plugin_dir):
    pm = PluginManager([FakeEntryPoint("good", "good_plugin", dist="draftsmith-good", version="2.1")],
                       strict=False, disabled=())
    spec = pm.registry.resolve("good", ["GoodArch"])
    assert (spec.plugin, spec.distribution, spec.version) == ("good", "draftsmith-good", "2.1")
    assert pm.registry.get_method("good").distribution == "draftsmith-good"
    assert pm.loaded[0].hooks == ("draftsmith_register_drafts", "draftsmith_register_methods")
    assert not pm.broken


@pytest.mark.parametrize("name", sorted(BROKEN_MODULES))
def test_broken_plugin_is_recorded_and_others_keep_working(plugin_dir, name):
    source, expected = BROKEN_MODULES[name]
    write_module(plugin_dir, name, source)
    eps = [FakeEntryPoint(name, name, dist=f"dist-{name}", version="0.9"),
           FakeEntryPoint("good", "good_plugin")]
    pm = PluginManager(eps, strict=False, disabled=())
    assert [b.name for b in pm.broken] == [name]
    broken = pm.broken[0]
    assert broken.distribution == f"dist-{name}" and broken.version == "0.9"
    assert expected in broken.error
    assert pm.registry.resolve("good", ["GoodArch"]).plugin == "good"
    # A plugin failing mid-registration leaves nothing half-registered behind.
    assert "half" not in pm.registry.known_methods()


def test_missing_module(plugin_dir):
    pm = PluginManager([FakeEntryPoint("ghost", "no_such_module_abc.plugin", dist="dist-ghost")],
                       strict=False, disabled=())
    assert pm.broken[0].name == "ghost"
    assert "ModuleNotFoundError" in pm.broken[0].error and "no_such_module_abc" in pm.broken[0].error


@pytest.mark.parametrize("name", ["raises_at_import", "registers_garbage"])
def test_strict_mode_raises_naming_the_distribution(plugin_dir, name):
    write_module(plugin_dir, name, BROKEN_MODULES[name][0])
    with pytest.raises(PluginLoadError) as info:
        PluginManager([FakeEntryPoint(name, name, dist="acme-drafts", version="3.0")], strict=True, disabled=())
    assert "acme-drafts" in str(info.value) and name in str(info.value)
    assert info.value.__cause__ is not None


def test_strict_mode_from_environment(plugin_dir, monkeypatch):
    write_module(plugin_dir, "raises_at_import", BROKEN_MODULES["raises_at_import"][0])
    monkeypatch.setenv("DRAFTSMITH_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="boom at import"):
        PluginManager([FakeEntryPoint("bad", "raises_at_import")])


def test_disable_plugins_from_environment(plugin_dir, monkeypatch):
    monkeypatch.setenv("DRAFTSMITH_DISABLE_PLUGINS", "other, good")
    pm = PluginManager([FakeEntryPoint("good", "good_plugin")])
    assert pm.skipped == ["good"] and not pm.loaded
    assert "good" not in pm.registry.known_methods()


def test_duplicate_plugin_name_is_broken_not_overwritten(plugin_dir):
    write_module(plugin_dir, "good_plugin2", GOOD)
    pm = PluginManager([FakeEntryPoint("good", "good_plugin", dist="first"),
                        FakeEntryPoint("good", "good_plugin2", dist="second")], strict=False, disabled=())
    assert len(pm.loaded) == 1 and len(pm.broken) == 1
    assert "already used by distribution first" in pm.broken[0].error


def test_manager_is_cached_and_reset():
    m1 = draftsmith.get_plugin_manager()
    assert draftsmith.get_plugin_manager() is m1
    draftsmith.reset_plugins()
    assert draftsmith.get_plugin_manager() is not m1


def test_in_process_registration_survives_until_reset():
    spec = draftsmith.register_draft(draftsmith.DraftSpec(method="nb", architectures=("A",), draft_cls="x:Y"))
    assert spec.plugin == "<in-process>"
    assert draftsmith.resolve_draft_spec("nb", ["A"]) == spec
    draftsmith.reset_plugins()
    with pytest.raises(draftsmith.DraftNotFoundError):
        draftsmith.resolve_draft_spec("nb", ["A"])


def test_importing_draftsmith_discovers_nothing_and_imports_no_torch():
    code = ("import sys, draftsmith, draftsmith.plugins as p; "
            "assert p._MANAGER is None, 'discovery at import'; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


FORMAT_PLUGIN = """
import draftsmith

def detect(config):
    return config.get("architectures") == ["EngineLayout"]

def read(path, config):
    return ("read", str(path), config["architectures"][0])

def write(draft, out_dir, **options):
    return out_dir

@draftsmith.hookimpl
def draftsmith_register_formats(registry):
    registry.register_format(draftsmith.FormatSpec("good", "engine", writer=write, reader=read, detect=detect,
                                                   clients=("Engine",)))
"""


def test_a_plugin_adds_a_format_to_another_plugins_method_and_a_second_one_conflicts(plugin_dir):
    write_module(plugin_dir, "format_plugin", FORMAT_PLUGIN)
    write_module(plugin_dir, "format_plugin_2", FORMAT_PLUGIN)
    pm = PluginManager([FakeEntryPoint("good", "good_plugin"), FakeEntryPoint("fmt", "format_plugin", dist="eng-fmt")],
                       strict=False, disabled=())
    fmt = pm.registry.get_format("good", "engine")
    assert (fmt.plugin, fmt.distribution, fmt.clients) == ("fmt", "eng-fmt", ("Engine",))
    assert pm.registry.detect_format({"architectures": ["EngineLayout"]}) is fmt
    assert pm.registry.detect_format({"architectures": ["Other"]}) is None
    with pytest.raises(draftsmith.ConfigError, match="has no 'vllm' format; its formats: engine"):
        pm.registry.get_format("good", "vllm")
    two = PluginManager([FakeEntryPoint("good", "good_plugin"), FakeEntryPoint("fmt", "format_plugin", dist="eng-a"),
                         FakeEntryPoint("fmt2", "format_plugin_2", dist="eng-b")], strict=False, disabled=())
    with pytest.raises(draftsmith.DraftConflictError, match="eng-a.*eng-b"):
        two.registry.get_format("good", "engine")
