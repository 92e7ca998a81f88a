import pytest

import draftsmith
from draftsmith import DraftConflictError, DraftNotFoundError, DraftSpec, MethodSpec
from draftsmith.registry import Provenance, Registry


def _spec(method="m", archs=("A",), cls="pkg.mod:Cls", **kw):
    return DraftSpec(method=method, architectures=archs, draft_cls=cls, **kw)


def test_first_match_in_given_order():
    reg = Registry()
    reg.register(_spec(archs=("A",), cls="p:ForA"))
    reg.register(_spec(archs=("B",), cls="p:ForB"))
    assert reg.resolve("m", ["X", "B", "A"]).draft_class_path == "p:ForB"
    assert reg.resolve("m", ["A", "B"]).draft_class_path == "p:ForA"
    assert reg.resolve("m", "A").draft_class_path == "p:ForA"


def test_not_found_lists_supported_architectures():
    reg = Registry()
    reg.register(_spec(archs=("A", "B")))
    with pytest.raises(DraftNotFoundError) as info:
        reg.resolve("m", ["Zed"])
    msg = str(info.value)
    assert "'m'" in msg and "Zed" in msg and "Supported architectures for 'm': A, B" in msg
    assert isinstance(info.value, LookupError)


def test_empty_architectures_is_a_clear_error():
    reg = Registry()
    reg.register(_spec())
    with pytest.raises(DraftNotFoundError, match="no architectures given"):
        reg.resolve("m", [])


def test_unknown_method_names_the_distribution_to_install():
    reg = Registry()
    with pytest.raises(DraftNotFoundError, match=r"pip install draftsmith-dflash"):
        reg.resolve("dflash", ["Qwen3ForCausalLM"])
    with pytest.raises(DraftNotFoundError, match=r"unknown draft method 'foo'.*Installed methods: none"):
        reg.resolve("foo", ["A"])


def test_priority_wins_and_equal_priority_conflicts_only_when_resolved():
    reg = Registry()
    a = reg.staged(Provenance("a", "dist-a", "1.0"))
    a.register(_spec(archs=("A", "B"), cls="a:Draft"))
    reg.merge(a)
    b = reg.staged(Provenance("b", "dist-b", "2.0"))
    b.register(_spec(archs=("A",), cls="b:Draft"))
    b.register(_spec(archs=("C",), cls="b:Better", priority=5))
    reg.merge(b)
    # B is served by dist-a alone: the conflict on A does not break it.
    assert reg.resolve("m", ["B"]).draft_class_path == "a:Draft"
    with pytest.raises(DraftConflictError) as info:
        reg.resolve("m", ["A"])
    assert "dist-a 1.0" in str(info.value) and "dist-b 2.0" in str(info.value)
    rows = {(arch, s.draft_class_path): status for _m, arch, s, status in reg.iter_entries()}
    assert rows[("A", "a:Draft")] == rows[("A", "b:Draft")] == "conflict"
    assert rows[("B", "a:Draft")] == "ok"
    # A higher priority resolves the conflict.
    c = reg.staged(Provenance("c", "dist-c", "1.0"))
    c.register(_spec(archs=("A",), cls="c:Override", priority=1))
    reg.merge(c)
    assert reg.resolve("m", ["A"]).draft_class_path == "c:Override"
    assert reg.resolve("m", ["C"]).plugin == "b"


def test_provenance_is_stamped_from_the_loading_plugin():
    reg = Registry()
    stage = reg.staged(Provenance("plug", "draftsmith-plug", "0.3"))
    stage.register(_spec())
    reg.merge(stage)
    spec = reg.resolve("m", ["A"])
    assert (spec.plugin, spec.distribution, spec.version) == ("plug", "draftsmith-plug", "0.3")


def test_method_aliases_share_drafts():
    reg = Registry()
    reg.register(_spec(method="eagle1", archs=("LlamaForCausalLM",), cls="e:V12"))
    reg.register_method(MethodSpec(name="eagle1"))
    reg.register_method(MethodSpec(name="eagle2", drafts_from="eagle1"))
    assert reg.resolve("eagle2", ["LlamaForCausalLM"]).draft_class_path == "e:V12"
    assert reg.architectures("eagle2") == ["LlamaForCausalLM"]
    assert reg.draft_method("eagle2") == "eagle1"


def test_register_rejects_non_specs():
    reg = Registry()
    with pytest.raises(TypeError, match="expects a DraftSpec"):
        reg.register({"method": "m"})
    with pytest.raises(TypeError, match="expects a MethodSpec"):
        reg.register_method("m")


def test_duplicate_method_registration_is_a_conflict():
    reg = Registry()
    for dist in ("d1", "d2"):
        stage = reg.staged(Provenance(dist, dist, "1"))
        stage.register_method(MethodSpec(name="m", summary=dist))
        reg.merge(stage)
    with pytest.raises(DraftConflictError, match="d1 1 and d2 1"):
        reg.get_method("m")


def test_first_party_coverage_and_compat_views():
    from draftsmith_dflash.registry import DFLASH_DRAFT_REGISTRY, resolve_dflash_draft_spec
    from draftsmith_dspark.registry import DSPARK_DRAFT_REGISTRY, resolve_dspark_draft_spec
    from draftsmith_eagle.registry import (EAGLE1_DRAFT_REGISTRY, EAGLE3_DRAFT_REGISTRY,
                                           resolve_eagle1_draft_spec, resolve_eagle3_draft_spec)

    six = {"LlamaForCausalLM", "Phi3ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM",
           "MistralForCausalLM", "Qwen2ForCausalLM"}
    assert six <= set(EAGLE1_DRAFT_REGISTRY) and six | {"GptOssForCausalLM"} <= set(EAGLE3_DRAFT_REGISTRY)
    assert EAGLE1_DRAFT_REGISTRY["GptOssForCausalLM"].draft_class_path == \
        "draftsmith_eagle.draft_llama_v12:LlamaEagleDraftModel"
    assert EAGLE3_DRAFT_REGISTRY["GptOssForCausalLM"].draft_class_path == \
        "draftsmith_eagle.draft_gpt_oss:GptOssEagle3DraftModel"
    assert resolve_eagle3_draft_spec(["Qwen3ForCausalLM"]).draft_class_path == \
        "draftsmith_eagle.draft_llama:LlamaEagle3DraftModel"
    assert resolve_eagle1_draft_spec(["LlamaForCausalLM"]).draft_class_path == \
        "draftsmith_eagle.draft_llama_v12:LlamaEagleDraftModel"
    for view, resolve, cls in [
        (DFLASH_DRAFT_REGISTRY, resolve_dflash_draft_spec, "draftsmith_dflash.draft_qwen3:Qwen3DFlashDraftModel"),
        (DSPARK_DRAFT_REGISTRY, resolve_dspark_draft_spec, "draftsmith_dspark.draft_qwen3:Qwen3DSparkModel"),
    ]:
        assert {"Qwen3ForCausalLM", "Qwen3MoeForCausalLM"} <= set(view)
        assert resolve(["Qwen3MoeForCausalLM"]).draft_class_path == cls
        assert view.get("DeepseekV4ForCausalLM") is None and "DeepseekV4ForCausalLM" not in view
    with pytest.raises(DraftNotFoundError, match="no 'dspark' draft spec registered"):
        resolve_dspark_draft_spec(["DeepseekV4ForCausalLM"])
    # Views are live: an in-process registration shows up.
    draftsmith.register_draft(DraftSpec(method="dflash", architectures=("OlmoForCausalLM",),
                                        draft_cls="draftsmith_dflash.draft_qwen3:Qwen3DFlashDraftModel"))
    assert "OlmoForCausalLM" in DFLASH_DRAFT_REGISTRY


def test_list_drafts_rows():
    rows = draftsmith.list_drafts("eagle2")
    assert rows and all(r["method"] == "eagle1" and r["status"] == "ok" for r in rows)
    assert {"method", "architecture", "draft_class", "plugin", "distribution", "version", "status"} == set(rows[0])
    assert {r["distribution"] for r in draftsmith.list_drafts()} == {
        "draftsmith-eagle", "draftsmith-dflash", "draftsmith-dspark"}
