import dataclasses

import pytest

import draftsmith
from draftsmith import DraftSpec
from draftsmith.errors import DraftsmithError
from draftsmith.spec import DraftSpecProtocol


class _Draft:
    built_with = None

    def __init__(self, config):
        self.config = config

    @classmethod
    def build_draft_config(cls, target_config, **options):
        return {"hidden": target_config["hidden_size"], **options}


def test_draftspec_is_frozen_and_normalises():
    spec = DraftSpec(method="eagle3", architectures=["LlamaForCausalLM"], draft_cls="pkg.mod:Cls")
    assert spec.architectures == ("LlamaForCausalLM",)
    assert spec.priority == 0 and spec.plugin is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.method = "x"
    assert DraftSpec(method="m", architectures="A", draft_cls="a:B").architectures == ("A",)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="", architectures=("A",), draft_cls="a:B"), "method"),
    (dict(method="m", architectures=(), draft_cls="a:B"), "architectures"),
    (dict(method="m", architectures=("A", ""), draft_cls="a:B"), "architectures"),
    (dict(method="m", architectures=("A",), draft_cls="no_colon"), "module:QualName"),
    (dict(method="m", architectures=("A",), draft_cls=42), "draft_cls"),
    (dict(method="m", architectures=("A",), draft_cls="a:B", priority="high"), "priority"),
])
def test_draftspec_rejects_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DraftSpec(**kwargs)


def test_lazy_draft_cls_import_and_build():
    spec = DraftSpec(method="m", architectures=("A",), draft_cls=f"{__name__}:_Draft")
    assert spec.draft_class_path == f"{__name__}:_Draft"
    assert spec.load_draft_cls() is _Draft
    assert spec.build_config({"hidden_size": 8}, layers=2) == {"hidden": 8, "layers": 2}
    model = spec.build({"hidden_size": 8})
    assert isinstance(model, _Draft) and model.config == {"hidden": 8}


def test_bad_import_string_is_a_clear_error():
    with pytest.raises(DraftsmithError, match="cannot import module 'no_such_pkg_xyz.mod'"):
        DraftSpec(method="m", architectures=("A",), draft_cls="no_such_pkg_xyz.mod:Cls").load_draft_cls()
    with pytest.raises(DraftsmithError, match="has no attribute 'Nope'"):
        DraftSpec(method="m", architectures=("A",), draft_cls=f"{__name__}:Nope").load_draft_cls()


def test_protocol_accepts_any_conforming_object():
    class CustomSpec:
        method = "m"
        architectures = ("A",)
        priority = 3
        draft_class_path = "x:Y"

        def load_draft_cls(self):
            return _Draft

        def build_config(self, target_config, **options):
            return {}

        def build(self, target_config, **options):
            return _Draft({})

    custom = CustomSpec()
    assert isinstance(custom, DraftSpecProtocol)
    draftsmith.register_draft(custom)
    assert draftsmith.resolve_draft_spec("m", ["A"]) is custom
    assert not isinstance(object(), DraftSpecProtocol)


def test_public_api_names():
    for name in ["list_drafts", "get_registry", "register_draft", "hookimpl", "DraftSpec", "DraftNotFoundError",
                 "DraftConflictError", "PluginLoadError", "resolve_draft_spec", "load_draft", "MethodSpec"]:
        assert hasattr(draftsmith, name), name
    assert issubclass(draftsmith.DraftNotFoundError, LookupError)
