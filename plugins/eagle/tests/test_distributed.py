"""Data parallelism: global loss denominators (DDP-averaged gradients == the full batch's) and DTensor weights."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.testing import assert_close

from draftsmith.method import TargetFeatures, TargetHeads
from draftsmith_eagle.objective import Eagle1Objective, Eagle3Objective


def _setup(eagle, method):
    tc = eagle.target_config()
    torch.manual_seed(0)
    heads = TargetHeads(nn.Embedding(128, 64), nn.Linear(64, 128, bias=False), 128, 0, (2,))
    if method == "eagle3":
        draft = eagle.make_eagle3(tc, draft_vocab_size=64)
        objective = Eagle3Objective(draft, heads, ttt_steps=3)
        objective.prepare(torch.arange(128))
    else:
        draft = eagle.make_eagle1(tc)
        objective = Eagle1Objective(draft, heads, feature_noise=0.0)
    # rows with very different numbers of supervised tokens: a per-rank mean would weight them wrongly
    batch = eagle.make_batch(batch=2, length=16, prompt=3)
    batch["loss_mask"][1, :13] = 0
    g = torch.Generator().manual_seed(7)
    request = objective.target_request()
    feats = TargetFeatures({i: torch.randn(2, 16, 64, generator=g) for i in request.layer_ids},
                           torch.randn(2, 16, 64, generator=g))
    return draft, objective, batch, feats


def _rank(rank, world, port, method, eagle, expected, errors):
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.set_num_threads(1)
        draft, objective, batch, feats = _setup(eagle, method)
        half = {k: v[rank:rank + 1] for k, v in batch.items()}
        part = TargetFeatures({i: h[rank:rank + 1] for i, h in feats.hidden_states.items()},
                              feats.final_hidden[rank:rank + 1])
        out = objective(half, part)
        out.loss.backward()
        for name, p in draft.named_parameters():
            if p.grad is not None:
                grad = p.grad.clone()
                dist.all_reduce(grad)  # what DDP does: the mean over ranks
                assert_close(grad / world, expected[name], rtol=1e-4, atol=1e-6, msg=name)
        dist.destroy_process_group()
    except BaseException as exc:  # reported to the parent, which fails the test with it
        errors.put(f"rank {rank}: {type(exc).__name__}: {exc}")


@pytest.mark.parametrize("method", ["eagle3", "eagle1"])
def test_ddp_gradients_equal_the_full_batch(eagle, method):
    draft, objective, batch, feats = _setup(eagle, method)
    objective(batch, feats).loss.backward()
    expected = {n: p.grad.clone() for n, p in draft.named_parameters() if p.grad is not None}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # children inherit the imported modules: no re-import cost
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, method, eagle, expected, errors)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, "\n".join(failures)
    assert all(p.exitcode == 0 for p in procs)


def test_dtensor_embedding_is_gathered(eagle):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        weight = torch.randn(128, 64)
        embed = nn.Embedding(128, 64)
        embed.weight = nn.Parameter(distribute_tensor(weight, mesh, [Shard(0)]), requires_grad=False)
        draft = eagle.make_eagle3(eagle.target_config())
        draft.copy_embeddings_from_target(embed)
        assert type(draft.embed_tokens.weight.data) is torch.Tensor
        assert torch.equal(draft.embed_tokens.weight, weight)
    finally:
        dist.destroy_process_group()
