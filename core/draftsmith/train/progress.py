"""Run output on the main rank: records to the run's trackers (``metrics.jsonl`` and any selected in
``train.trackers``), console lines and the tqdm progress bar (with ETA)."""

from __future__ import annotations

import sys
import time
from typing import Any


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    return value


class RunLog:
    """Sends every record to the run's trackers and shows progress; silent on non-main ranks.

    A record is a train/eval record ``{"step", "split", **metrics}`` or an event ``{"event", "step", **info}``.
    On a terminal, progress is a tqdm bar (loss, rate, ETA). When stderr is not a terminal (a log file, a batch
    job) a bar would fill the log with carriage returns, so each train record prints one line with the ETA.
    """

    def __init__(self, *, enabled: bool, progress: bool, total: int, initial: int, trackers: Any = None) -> None:
        self.enabled, self.total, self.initial = enabled, total, initial
        self.step = initial
        self.trackers = trackers if enabled else None
        self._bar = None
        self._lines = enabled and progress and not sys.stderr.isatty()
        if enabled and progress and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                             file=sys.stderr)
        self.start = time.time()

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def record(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _plain(v) for k, v in record.items()}
        rest = {k: v for k, v in record.items() if k not in ("step", "split", "event")}
        if self.trackers is not None:
            if "event" in record:
                self.trackers.event(int(record["step"]), str(record["event"]), rest)
            else:
                self.trackers.log(int(record["step"]), str(record["split"]), rest)
        if self._lines and record.get("split") == "train":
            loss = record.get("loss", float("nan"))
            self.info(f"step {record['step']}/{self.total}  loss {loss if isinstance(loss, str) else f'{loss:.4g}'}  "
                      f"lr {record.get('lr', 0):.3g}  {record.get('tokens_per_s', 0):.0f} tok/s  "
                      f"eta {self.eta()}")

    def eta(self) -> str:
        done = self.step - self.initial
        if done <= 0:
            return "?"
        seconds = int((time.time() - self.start) / done * (self.total - self.step))
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"

    def advance(self, steps: int = 1, postfix: dict[str, Any] | None = None) -> None:
        self.step += steps
        if self._bar is not None:
            self._bar.update(steps)
            if postfix:
                self._bar.set_postfix({k: f"{_plain(v):.4g}" if isinstance(_plain(v), float) else v
                                       for k, v in postfix.items()}, refresh=False)

    def close(self, status: str = "completed") -> None:
        """Close the bar and finish every tracker (``status``: ``"completed"`` or ``"failed"``)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.trackers is not None:
            self.trackers.finish(status)
            self.trackers = None


class MetricWindow:
    """Metric sums over the micro-batches since the last log line, kept on the device (no host sync per
    micro-batch) and all-reduced over ranks when read. The loss is the mean micro-batch loss (what
    data-parallel training optimises); the objective's metrics are weighted by ``num_tokens``."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.totals: Any = None  # loss sum, micro-batches, tokens, supervised tokens
        self.norms: list[Any] = []
        self.seconds = self.target_seconds = 0.0

    def add(self, out: Any, batch: dict[str, Any]) -> None:
        import torch

        loss = out.loss.detach().double()
        n = torch.as_tensor(out.num_tokens, dtype=torch.float64, device=loss.device)
        row = torch.stack([loss, torch.ones_like(loss), batch["attention_mask"].sum().double(), n])
        self.totals = row if self.totals is None else self.totals + row
        for key, value in out.metrics.items():
            v = torch.as_tensor(value.detach() if torch.is_tensor(value) else value, dtype=torch.float64,
                                device=loss.device) * n
            self.sums[key] = self.sums[key] + v if key in self.sums else v

    def finish_step(self, norm: Any, seconds: float, target_seconds: float) -> None:
        self.norms.append(norm.double())
        self.seconds += seconds
        self.target_seconds += target_seconds

    def reduce(self) -> dict[str, Any]:
        import torch

        from .distributed import all_reduce_sum, on_comm_device

        keys = sorted(self.sums)
        vec = torch.stack([self.sums[k] for k in keys] + list(self.totals.unbind()))
        vals = all_reduce_sum(on_comm_device(vec)).tolist()
        loss_sum, micro, tokens, sup = vals[-4:]
        out = {k: v / sup if sup else float("nan") for k, v in zip(keys, vals[:-4])}
        out["loss"] = loss_sum / micro if micro else float("nan")
        out["grad_norm"] = float(torch.stack(self.norms).mean())
        out["tokens_per_s"] = tokens / self.seconds if self.seconds else float("nan")  # all ranks' tokens
        out["supervised_tokens"] = sup
        out["target_time_share"] = self.target_seconds / self.seconds if self.seconds else float("nan")
        return out
