"""Shared by the client scripts in this folder (each runs inside one client's own venv, with this folder first
on ``sys.path`` because Python puts a script's directory there): the weight-warning filter and the re-save that
produces a checkpoint written by the client itself."""

import torch


def weight_warnings(caught) -> list[str]:
    """The recorded warnings that speak of weights (missing / unexpected / newly initialised tensors)."""
    return [str(w.message) for w in caught if "weight" in str(w.message).lower()]


def resave(model, save_dir: str, logits_of) -> list:
    """Change every weight a little (seeded), save with the client's own ``save_pretrained`` to ``save_dir`` and
    return the changed model's logits: a checkpoint written by the client, for draftsmith's reader."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(save_dir)
    return logits_of(model)
