"""Anchor sampling of block drafters (DFlash, DSpark): which positions start a training block.

Up to ``num_anchors`` anchors per row are drawn uniformly without replacement among the ``valid`` positions:
random keys (from the objective's :class:`~draftsmith.nn.random_stream.RandomStream`, CPU generators, so draws do
not depend on the device) are sorted per row, the smallest ``n`` picked, the picks sorted ascending. Each method
decides which positions are valid (its alignment) and whether the width is fixed.
"""

from __future__ import annotations

import torch


def sample_anchors(valid: torch.Tensor, num_anchors: int, generator: torch.Generator | None = None, *,
                   fixed_width: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``valid (B, L)`` bool → ``(anchors (B, N) long, keep (B, N) bool)``.

    ``N = num_anchors`` when ``fixed_width`` (shapes never depend on the data), else ``min(num_anchors, max valid
    count in the batch)`` (0 when no row has a valid anchor). ``keep[b, i] = i < min(count_b, N)``: row ``b``'s
    kept anchors come first, ascending; unkept anchors are 0.
    """
    if num_anchors < 1:
        raise ValueError(f"num_anchors must be >= 1, got {num_anchors}")
    b, length = valid.shape
    device = valid.device
    counts = valid.sum(dim=1)  # (B,)
    width = min(num_anchors, length) if fixed_width else (min(num_anchors, int(counts.max())) if b and length else 0)
    if width == 0:
        anchors = torch.zeros(b, num_anchors if fixed_width else 0, dtype=torch.long, device=device)
        return anchors, anchors.bool()
    keys = torch.rand(b, length, generator=generator).to(device)
    keys = keys.masked_fill(~valid, 2.0)  # non-candidates sort last
    chosen = keys.argsort(dim=1)[:, :width]  # (B, N) a uniform sample of each row's candidates first
    keep = torch.arange(width, device=device)[None, :] < counts.clamp(max=width)[:, None]  # (B, N)
    anchors = chosen.masked_fill(~keep, length).sort(dim=1).values.masked_fill(~keep, 0)  # kept ascending
    if fixed_width and width < num_anchors:
        pad = num_anchors - width
        anchors = torch.cat([anchors, anchors.new_zeros(b, pad)], dim=1)
        keep = torch.cat([keep, keep.new_zeros(b, pad)], dim=1)
    return anchors, keep
