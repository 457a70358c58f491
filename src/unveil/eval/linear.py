"""Linear probe on frozen, cached features.

Features are extracted once (eval-mode backbone, no augmentation), optionally standardised with
the train statistics, and a single linear layer is trained on them; cheap enough to run on a CPU.
Two variants are in use: ``standardize=True, schedule="cosine"`` (our default), and the RR
protocol of Patacchiola & Storkey that the context-patch paper follows: raw features, Adam at a
constant lr 1e-3, batch 128, 100 epochs (``standardize=False, schedule="constant"``).
MAE's linear probe is ``head_bn=True`` (``BatchNorm1d(D, affine=False)`` before the linear layer:
its features are not normalised, and the BN without affine parameters keeps the classifier
linear), ``optimizer="lars"`` at lr 0.1 (x batch/256), weight decay 0, on the [CLS] feature.
Reports the last epoch and the best epoch (the overlay paper reports the best *test* epoch,
which selects the model on the test set; we report both and say which is which).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .knn import topk_accuracy

SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adam", "sgd", "lars")


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                 epochs: int = 100, lr: float = 1e-3, batch_size: int = 256, weight_decay: float = 0.0,
                 optimizer: str = "adam", seed: int = 0, standardize: bool = True,
                 schedule: str = "cosine", head_bn: bool = False) -> dict[str, Any]:
    """Train ``Linear(D, num_classes)`` on features; return top-1/top-5 per epoch, best and last.

    ``head_bn``: ``BatchNorm1d(D, affine=False)`` before the linear layer (batch statistics while
    training, running ones at test). ``lars``: LARS with momentum 0.9 (trust ratio on the weight, not
    the bias, as MAE's), from ``unveil.train.optim``."""
    if schedule not in SCHEDULES:
        raise UserError(f"linear probe schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if optimizer not in OPTIMIZERS:
        raise UserError(f"linear probe optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    g = torch.Generator().manual_seed(seed)
    train_x, test_x = train_x.float(), test_x.float()
    if standardize:
        mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(seed)
    linear = nn.Linear(train_x.shape[1], num_classes)
    head: nn.Module = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False), linear) if head_bn else linear
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    elif optimizer == "lars":
        from ..train.optim import LARS

        opt = LARS([{"params": [linear.weight], "lars": True},
                    {"params": [linear.bias], "lars": False, "weight_decay": 0.0}],
                   lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(train_x) // batch_size))
    sched: torch.optim.lr_scheduler.LRScheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch) if schedule == "cosine"
        else torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0))
    history = []
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(len(train_x), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(head(train_x[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        head.eval()
        with torch.no_grad():
            acc = topk_accuracy(head(test_x), test_y)
        history.append({"epoch": epoch, **acc})
    best = max(history, key=lambda r: r["top1"])
    return {"last_top1": history[-1]["top1"], "last_top5": history[-1]["top5"], "best_top1": best["top1"],
            "best_top5": best["top5"], "best_epoch": best["epoch"], "epochs": epochs, "history": history}
