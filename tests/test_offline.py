"""Offline features: `prepare-features` shards + manifest, online == offline training on the same batches (the toy
method and every installed method), bf16/fp16 storage halving the disk, manifest mismatches naming the field,
and packed rows seeing only their own document."""

from __future__ import annotations

import json

import pytest
import torch

from draftsmith.data.features import FORMAT, FeatureCache, ManifestMismatch

from support.tiny import CHATML_PLAIN, make_chat_data, make_target
from support.train import finite, prepare, register_toy, run_train, toy_config, train_losses


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    return {"target": make_target(root / "tgt", num_layers=6), "data": make_chat_data(root / "d.jsonl", n=16),
            "eval": make_chat_data(root / "e.jsonl", n=4, seed=1), "root": root}


def test_prepare_features_writes_shards_heads_and_a_complete_manifest(tmp_path, world, toy):
    cfg = toy_config(tmp_path, world["target"], world["data"], **{"data.eval": [str(world["eval"])]})
    manifest = prepare(cfg, tmp_path / "feat", dtype="bfloat16", shard_mb=0)  # shard_mb=0: one sample per shard
    on_disk = json.loads((tmp_path / "feat" / "manifest.json").read_text())
    assert on_disk == manifest
    for field in ("target_path", "target_config_sha256", "tokenizer_sha256", "layer_ids", "layer_id_convention",
                  "seq_len", "dtype", "chat_template_sha256", "draftsmith_version", "bytes_per_sample"):
        assert manifest[field] is not None, field
    assert manifest["format"] == FORMAT and manifest["layer_ids"] == [2, 4] and manifest["final_hidden"] is False
    assert manifest["layer_id_convention"] == "output-of-layer" and manifest["dtype"] == "bfloat16"
    assert manifest["seq_len"] == 96 and manifest["target_path"] == str(world["target"].resolve())
    train_split = manifest["splits"]["train"]
    assert train_split["num_samples"] == 16 and len(train_split["shards"]) == 16
    assert train_split["data_files"][0]["path"] == str(world["data"].resolve())
    assert manifest["splits"]["eval"]["num_samples"] == 4
    files = sorted(p.relative_to(tmp_path / "feat").as_posix() for p in (tmp_path / "feat").rglob("*") if p.is_file())
    assert all(f.endswith(".safetensors") or f == "manifest.json" for f in files)  # never pickle
    assert "heads.safetensors" in files
    # what comes back: the same samples, features of the stored dtype, the target heads
    cache = FeatureCache(tmp_path / "feat")
    split = cache.split("train")
    feats = split.features(3, [2, 4])
    sample = split.samples()[3]
    assert feats[2].dtype == torch.bfloat16 and feats[2].shape == (len(sample), 32)
    heads = cache.heads()
    assert heads.vocab_size == 128 and heads.lm_head.weight.shape == (128, 32)
    assert not heads.lm_head.weight.requires_grad
    # refusing to overwrite silently
    from draftsmith.errors import ConfigError

    with pytest.raises(ConfigError, match="already holds a feature cache"):
        prepare(cfg, tmp_path / "feat")


def test_half_precision_storage_halves_the_disk(tmp_path, world, toy):
    cfg = toy_config(tmp_path, world["target"], world["data"])
    sizes = {d: prepare(cfg, tmp_path / d, dtype=d)["bytes_per_sample"] for d in ("float32", "bfloat16", "float16")}
    assert sizes["bfloat16"] == pytest.approx(sizes["float16"], rel=1e-3)
    assert 0.45 < sizes["bfloat16"] / sizes["float32"] < 0.6  # token ids and masks do not shrink


METHODS = {  # method -> (draft options, method options) for a 6-layer tiny Qwen3 target
    "toy": ({}, {}),
    "eagle1": ({}, {}),
    "eagle3": ({}, {"ttt_steps": 2}),
    "dflash": ({"mask_token_id": 3, "num_draft_layers": 1, "block_size": 4}, {"num_anchors": 8}),
    "dspark": ({"mask_token_id": 3, "num_draft_layers": 1, "block_size": 4, "markov_rank": 8}, {"num_anchors": 8}),
}


def installed(method: str) -> bool:
    import draftsmith

    try:
        draftsmith.get_method(method).load_objective()
        return True
    except Exception:
        return False


@pytest.mark.parametrize("method", list(METHODS))
def test_online_and_offline_training_agree(tmp_path, world, toy, method):
    if method != "toy" and not installed(method):
        pytest.fail(f"method {method!r} is not installed or its objective does not import")
    draft, options = METHODS[method]
    base = toy_config(tmp_path, world["target"], world["data"], method=method, draft=draft,
                      method_options=options, **{"train.max_steps": 3, "train.lr": 1e-3, "data.eval_fraction": 0.25,
                                                 "data.seq_len": 80})
    prepare(base, tmp_path / "feat", dtype="float32")
    online = run_train({**base, "train": {**base["train"], "output_dir": str(tmp_path / "online")}})
    offline = run_train({**base, "train": {**base["train"], "output_dir": str(tmp_path / "offline"),
                                           "offline_features": str(tmp_path / "feat")}})
    a, b = train_losses(tmp_path / "online"), train_losses(tmp_path / "offline")
    assert len(a) == 3 and all(finite(x) for x in a)
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(offline.eval_metrics["loss"]), torch.tensor(online.eval_metrics["loss"]),
                               rtol=1e-4, atol=1e-5)


def test_bf16_features_and_packing_train_close_to_online(tmp_path, world, toy):
    base = toy_config(tmp_path, world["target"], world["data"], **{"train.max_steps": 3, "data.packing": True,
                                                                   "data.seq_len": 200})
    prepare(base, tmp_path / "feat", dtype="bfloat16")
    run_train({**base, "train": {**base["train"], "output_dir": str(tmp_path / "online")}})
    run_train({**base, "train": {**base["train"], "output_dir": str(tmp_path / "offline"),
                                 "offline_features": str(tmp_path / "feat")}})
    torch.testing.assert_close(torch.tensor(train_losses(tmp_path / "offline")),
                               torch.tensor(train_losses(tmp_path / "online")), rtol=2e-2, atol=2e-2)


@pytest.fixture(scope="module")
def cache(world, tmp_path_factory):
    import draftsmith

    draftsmith.reset_plugins()
    register_toy()
    out = tmp_path_factory.mktemp("cache") / "feat"
    prepare(toy_config(out.parent, world["target"], world["data"]), out)
    return out


@pytest.mark.parametrize("change,field", [
    ({"data.seq_len": 64}, "'seq_len'"),
    ({"draft": {"target_layer_ids": [1, 3]}}, "'layer_ids'"),
    ({"data.chat_template": CHATML_PLAIN}, "'chat_template_sha256'"),
    ({"data.train": "OTHER_DATA"}, "'splits.train.data_sha256'"),
    ({"target.path": "OTHER_TARGET"}, "'target_path'"),
    ({"data.eval": "OTHER_DATA"}, "'splits.eval' is missing"),
])
def test_manifest_mismatch_names_the_field(tmp_path, world, cache, toy, change, field):
    other_data = make_chat_data(tmp_path / "other.jsonl", n=16, seed=7)
    cfg = toy_config(tmp_path, world["target"], world["data"], **{"train.offline_features": str(cache)})
    for key, value in change.items():
        if value == "OTHER_DATA":
            value = [str(other_data)]
        if value == "OTHER_TARGET":
            value = str(make_target(tmp_path / "other_target", num_layers=6, seed=1))
        section, _, leaf = key.partition(".")
        if leaf:
            cfg[section][leaf] = value
        else:
            cfg[section] = value
    with pytest.raises(ManifestMismatch) as err:
        run_train(cfg)
    assert f"field {field}" in str(err.value) or f"field {field.strip(chr(39))}" in str(err.value)


def test_a_cache_without_manifest_is_refused(tmp_path, world, cache, toy):
    import shutil

    from draftsmith.errors import DataError

    broken = tmp_path / "broken"
    shutil.copytree(cache, broken)
    (broken / "manifest.json").unlink()  # e.g. prepare-features was killed before finishing
    cfg = toy_config(tmp_path, world["target"], world["data"], **{"train.offline_features": str(broken)})
    with pytest.raises(DataError, match="no manifest.json"):
        run_train(cfg)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["format_version"] = 99
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestMismatch, match="field 'format_version'"):
        run_train(cfg)


def test_packed_rows_see_only_their_own_document(world):
    """The target gets position_ids that restart per document (and no 2-D mask): its features for a packed row
    equal those of each document run alone."""
    from draftsmith.method import TargetRequest
    from draftsmith.target import load_target, run_target

    target = load_target(world["target"])
    request = TargetRequest(layer_ids=(0, 3), final_hidden=True)
    torch.manual_seed(0)
    docs = [torch.randint(5, 100, (n,)) for n in (7, 5, 9)]
    row = torch.cat(docs)[None]
    pos = torch.cat([torch.arange(len(d)) for d in docs])[None]
    packed, _ = run_target(target, request, row, attention_mask=None, position_ids=pos, use_cache=False)
    start = 0
    for d in docs:
        alone, _ = run_target(target, request, d[None], attention_mask=torch.ones(1, len(d), dtype=torch.long),
                              use_cache=False)
        for lid in (0, 3):
            torch.testing.assert_close(packed.hidden_states[lid][0, start:start + len(d)], alone.hidden_states[lid][0],
                                       rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed.final_hidden[0, start:start + len(d)], alone.final_hidden[0],
                                   rtol=1e-5, atol=1e-5)
        start += len(d)
