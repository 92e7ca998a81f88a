"""ReplayStats.all_reduce under data parallelism: two gloo processes sum their replay counters exactly.
(Kept apart from test_estimate.py so the spawned workers import only torch and draftsmith.decode.estimate.)"""

from __future__ import annotations

import torch

from draftsmith.decode.estimate import ReplayStats, replay_greedy


def _all_reduce_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    lengths = torch.tensor([[-1, 1, 0, 0]]) if rank == 0 else torch.tensor([[-1, 0, 2, 0, 0]])
    stats = replay_greedy(lengths, (lengths >= 0).long()).all_reduce()
    queue.put((rank, stats.rounds, stats.committed, stats.offered_at, stats.accepted_at))
    dist.destroy_process_group()


def test_replay_stats_all_reduce_over_two_processes():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_all_reduce_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    a = replay_greedy(torch.tensor([[-1, 1, 0, 0]]), torch.tensor([[0, 1, 1, 1]]))
    b = replay_greedy(torch.tensor([[-1, 0, 2, 0, 0]]), torch.tensor([[0, 1, 1, 1, 1]]))
    total = ReplayStats().merge(a).merge(b)
    for _rank, rounds, committed, offered, accepted in results:
        assert (rounds, committed, offered, accepted) == (total.rounds, total.committed, total.offered_at,
                                                          total.accepted_at)
