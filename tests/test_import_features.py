"""`draftsmith import-features`: speculators' offline layout (what vLLM's extract_hidden_states writes) as a
feature source.

The engine side is built with the real speculators 0.9.0 in its own environment: its preprocessing writes the
dataset directory, and its training dataset (``ArrowDataset``) reads the directory back after the hidden-state
files are added — so the files are what speculators trains from. The hidden states are written the way vLLM
captures them, from HF ``output_hidden_states`` (input of layer ``e`` at engine id ``e``) and, for the last
slot, the last decoder layer's output before the final norm (HF's own last entry is after it). The imported
cache must equal what ``prepare-features`` captures from the target for the same samples, and train offline.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from support.cli import run_cli, subprocess_env
from support.interop import TESTS, client_python
from support.tiny import make_chat_data, make_target
from support.train import prepare

ENGINE_IDS = [1, 3, 5, 6]  # vLLM ids on the 6-layer target: draftsmith layers 0, 2, 4 and the last layer's output
SEQ_LEN = 96


def speculators(*args) -> None:
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run([str(client_python("speculators-0.9.0")), str(TESTS / "interop" / "speculators_features.py"),
                          *map(str, args)], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def write_engine_files(target_dir: Path, data_dir: Path, engine_ids) -> None:
    """``hidden_states/hs_<row>.safetensors`` for every dataset row, captured the way vLLM does."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from draftsmith.data.columnar import rows

    model = AutoModelForCausalLM.from_pretrained(str(target_dir)).eval()
    layers = model.model.layers
    out = data_dir / "hidden_states"
    out.mkdir()
    for n, row in rows(data_dir):
        ids = torch.tensor(row["input_ids"])[None]
        store = {}
        hook = layers[-1].register_forward_hook(
            lambda _m, _a, o: store.update(last=o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states  # [e] = input of layer e; [-1] post-norm
        hook.remove()
        slots = [hidden[e][0] if e < len(layers) else store["last"][0] for e in engine_ids]
        save_file({"token_ids": ids[0], "hidden_states": torch.stack(slots, 1).contiguous()},
                  str(out / f"hs_{n - 1}.safetensors"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from draftsmith.data.samples import load_samples

    root = tmp_path_factory.mktemp("engine")
    target = make_target(root / "tgt", num_layers=6)
    weights = load_file(str(target / "model.safetensors"))  # a final norm that is not all ones
    weights["model.norm.weight"] = torch.linspace(0.5, 1.5, weights["model.norm.weight"].numel())
    save_file(weights, str(target / "model.safetensors"), metadata={"format": "pt"})
    chats = make_chat_data(root / "chat.jsonl", n=10)
    samples, _ = load_samples([chats], AutoTokenizer.from_pretrained(str(target)), seq_len=SEQ_LEN)
    tokens = root / "tokens.jsonl"  # pre-tokenised rows: what speculators' preprocessing passes through
    tokens.write_text("".join(json.dumps({"input_ids": s.input_ids.tolist(), "loss_mask": s.loss_mask.tolist()}) + "\n"
                              for s in samples))
    data_dir = root / "specdata"
    speculators("preprocess", target, tokens, data_dir, SEQ_LEN)
    write_engine_files(target, data_dir, ENGINE_IDS)
    read = root / "speculators_read.safetensors"
    speculators("read", data_dir, SEQ_LEN, read)
    cfg = {"method": "eagle3", "target": {"path": str(target)}, "data": {"seq_len": SEQ_LEN, "eval_fraction": 0.0},
           "draft": {"target_layer_ids": [0, 2, 4]}, "method_options": {"ttt_steps": 2},
           "train": {"max_steps": 2, "batch_size": 2, "output_dir": str(root / "run"), "progress": False,
                     "save_every": 0, "eval_every": 0, "log_every": 1, "seed": 0}}
    config = root / "eagle3.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cache = root / "imported"
    run = run_cli(["import-features", str(config), "--speculators", str(data_dir), "--engine-layer-ids",
                   ",".join(map(str, ENGINE_IDS)), "--out", str(cache), "--dtype", "float32"])
    assert run.returncode == 0, run.stderr
    return {"root": root, "target": target, "tokens": tokens, "data": data_dir, "read": load_file(str(read)),
            "cfg": cfg, "config": config, "cache": cache, "log": run.stderr, "n": len(samples)}


def by_ids(split) -> dict[tuple, int]:
    return {tuple(s.input_ids.tolist()): i for i, s in enumerate(split.samples())}


def test_speculators_reads_every_row_of_the_engine_files(world):
    """The layout is speculators' own: its ArrowDataset yields every row (none skipped), with the aux slots and
    the pre-norm last hidden state split as its trainer expects."""
    read, n = world["read"], world["n"]
    assert sum(k.startswith("input_ids.") for k in read) == n
    for i in range(n):
        t = read[f"input_ids.{i}"].shape[0]
        assert read[f"aux.{i}"].shape == (t, 3 * 32) and read[f"last.{i}"].shape == (t, 32)


def test_imported_cache_equals_prepare_features_on_the_same_samples(world, tmp_path):
    from draftsmith.data.features import FeatureCache

    imported = FeatureCache(world["cache"])
    manifest = imported.manifest
    assert manifest["layer_ids"] == [0, 2, 4] and manifest["final_hidden"] is True
    assert manifest["source"] == {"format": "speculators", "path": str(world["data"].resolve()),
                                  "hidden_states": str((world["data"] / "hidden_states").resolve()),
                                  "engine_layer_ids": ENGINE_IDS, "rows": world["n"], "bad_rows": 0}
    assert f"imported {world['n']} samples from {world['n']} rows" in world["log"]
    captured_dir = tmp_path / "captured"
    prepare({**world["cfg"], "data": {**world["cfg"]["data"], "train": [str(world["tokens"])]}}, captured_dir)
    captured = FeatureCache(captured_dir)
    for field in ("target_config_sha256", "tokenizer_sha256", "layer_ids", "final_hidden", "layer_id_convention",
                  "seq_len", "chat_template_sha256", "heads", "hidden_size"):
        assert manifest[field] == captured.manifest[field], field
    a, b = imported.split("train"), captured.split("train")
    order_a, order_b = by_ids(a), by_ids(b)
    assert set(order_a) == set(order_b) and len(order_a) == world["n"]  # the same samples (speculators shuffles)
    for ids, i in order_a.items():
        j = order_b[ids]
        assert (a.samples()[i].loss_mask == b.samples()[j].loss_mask).all()
        fa, fb = a.features(i, [0, 2, 4, "final"]), b.features(j, [0, 2, 4, "final"])
        for key in (0, 2, 4, "final"):  # "final": our norm applied to the engine's pre-norm last slot
            torch.testing.assert_close(fa[key], fb[key], rtol=1e-5, atol=1e-5)
    ha, hb = imported.heads(), captured.heads()
    assert torch.equal(ha.lm_head.weight, hb.lm_head.weight) and torch.equal(ha.embed_tokens.weight,
                                                                              hb.embed_tokens.weight)


def test_the_speculators_view_matches_the_imported_features(world):
    """What speculators' trainer gets for a row equals the imported cache's layers (the last slot before our
    final norm): one set of files, read the same way by both."""
    from draftsmith.data.features import FeatureCache
    from draftsmith.target import load_target_heads

    split = FeatureCache(world["cache"]).split("train")
    order = by_ids(split)
    _, norm = load_target_heads(world["target"])
    read = world["read"]
    for r in range(world["n"]):
        i = order[tuple(read[f"input_ids.{r}"].tolist())]
        feats = split.features(i, [0, 2, 4, "final"])
        torch.testing.assert_close(read[f"aux.{r}"], torch.cat([feats[k] for k in (0, 2, 4)], -1))
        torch.testing.assert_close(norm(read[f"last.{r}"][None])[0], feats["final"])
        assert torch.equal(read[f"loss_mask.{r}"].to(torch.uint8), torch.from_numpy(split.samples()[i].loss_mask))


def test_offline_training_on_the_imported_cache(world):
    out = world["root"] / "run_imported"
    run = run_cli(["train", str(world["config"]), "--offline-features", str(world["cache"]), "--output-dir", str(out)])
    assert run.returncode == 0, run.stderr
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("split") == "train"]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert (out / "final" / "model.safetensors").is_file()


def test_heads_only_load_skips_the_decoder_layers(world, monkeypatch):
    """The importer loads the target cut to one decoder layer: the heads and norm equal a full load."""
    import draftsmith.target as target_mod

    full = target_mod.load_target(world["target"])
    monkeypatch.setattr(target_mod, "load_target", lambda *a, **k: pytest.fail("fell back to a full load"))
    heads, norm = target_mod.load_target_heads(world["target"])
    assert torch.equal(norm.weight, target_mod.find_final_norm(full).weight)
    assert torch.equal(heads.lm_head.weight, full.lm_head.weight)
    assert torch.equal(heads.embed_tokens.weight, full.get_input_embeddings().weight)
    assert heads.eos_token_ids == target_mod.target_heads(full).eos_token_ids


def _import(world, tmp_path, *extra, ids=ENGINE_IDS, data=None):
    return run_cli(["import-features", str(world["config"]), "--speculators", str(data or world["data"]),
                    "--engine-layer-ids", ",".join(map(str, ids)), "--out", str(tmp_path / "out"), *extra])


def _one_line(run, *needles):
    assert run.returncode != 0 and "Traceback" not in run.stderr, run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("draftsmith: error:"), run.stderr
    for needle in needles:
        assert needle in line, line


@pytest.mark.parametrize("ids,message", [
    ([1, 5, 6, 4], "lack layers [2] (engine ids [3])"),  # the run reads layer 2 (engine id 3)
    ([1, 3, 5, 2], "the final hidden state (engine id 6"),  # EAGLE-3 needs the last layer's output
    ([1, 3, 5, 9], "must be distinct engine ids in [0, 6]"),
    ([1, 3, 5, 6, 0], "hidden_states has shape"),  # more ids than the files have slots
])
def test_engine_ids_that_do_not_fit_the_files_or_the_run(world, tmp_path, ids, message):
    from draftsmith.errors import DraftsmithError
    from draftsmith.train.config import from_dict
    from draftsmith.train.import_features import import_features

    with pytest.raises(DraftsmithError) as err:
        import_features(from_dict(world["cfg"]), world["data"], ids, tmp_path / "out", log=lambda s: None)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_engine_input_is_one_clear_line(world, tmp_path):
    _one_line(_import(world, tmp_path, ids=[1, 5, 6, 4]), "lack layers [2] (engine ids [3])")
    _one_line(_import(world, tmp_path, data=tmp_path / "nowhere"), "do not exist")
    plain = tmp_path / "plain"
    plain.mkdir()
    _one_line(_import(world, tmp_path, data=plain), "is not a speculators data directory")


def test_a_row_the_engine_saw_differently_is_named_or_skipped(world, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    broken = data / "hidden_states" / "hs_3.safetensors"
    t = load_file(str(broken))
    t["token_ids"][0] += 1  # the engine tokenised another sequence
    save_file(t, str(broken))
    (data / "hidden_states" / "hs_5.safetensors").unlink()  # the engine never wrote this one
    _one_line(_import(world, tmp_path, data=data), "hs_3.safetensors (row 4", "token_ids differ")
    run = _import(world, tmp_path, "--on-bad-data", "skip", data=data)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["num_samples"] == world["n"] - 2 and manifest["source"]["bad_rows"] == 2
    assert "2 malformed skipped" in run.stderr and "token_ids differ" in run.stderr


def test_engine_ids_map_to_output_of_layer_ids():
    """vLLM id e (input of layer e) is draftsmith layer e - 1; e = 0 is the embedding output (-1); e = L, the last
    layer's output, is also the source of the final hidden state."""
    from draftsmith.data.engine_features import engine_slots, missing_keys

    assert engine_slots([0, 3, 6], 6) == {-1: 0, 2: 1, 5: 2, "final": 2}
    slots = engine_slots([2, 4], 6)
    assert slots == {1: 0, 3: 1}
    assert missing_keys(slots, [1, 3], False, 6) == ""
    assert missing_keys(slots, [1, 2], True, 6) == ("layers [2] (engine ids [3]) and the final hidden state "
                                                   "(engine id 6, the last layer's output)")
