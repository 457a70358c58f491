"""Linear probe on frozen, cached features.

Features are extracted once (eval-mode backbone, no augmentation), optionally standardised with
the train statistics, and a single linear layer is trained on them; cheap enough to run on a CPU.
Two variants are in use: ``standardize=True, schedule="cosine"`` (our default), and the RR
protocol of Patacchiola & Storkey that the context-patch paper follows: raw features, Adam at a
constant lr 1e-3, batch 128, 100 epochs (``standardize=False, schedule="constant"``).
MAE's linear probe (main_linprobe.py) is ``head_bn=True`` (``BatchNorm1d(D, affine=False)`` before
the linear layer: its features are not normalised, and the BN without affine parameters keeps the
classifier linear), ``optimizer="lars"``, weight decay 0, 90 epochs with 10 of warm-up
(``warmup_epochs=10``), the head drawn with std 0.01 (``init_std=0.01``), on the [CLS] feature.
Its lr is 0.1 x batch/256 at batch 16384: 6.4 for ~7,000 steps on ImageNet. LARS moves each layer by
``lr · 0.001 · ‖w‖`` per step whatever the batch, so what the probe reaches depends on the summed lr
over its steps, not on the batch: at our sizes (1,440 steps for 4,000 images at batch 256) MAE's
batch rule (lr 0.1) left the head near its initialisation (48.5 % on separable features where SGD
reached 99.7 %). ``lr="mae-budget"`` gives the probe MAE's summed lr instead:
``lr = 6.4 · 7,038 / steps`` (``mae_budget_lr``), measured in ``tests/protocols/test_eval_protocols.py``.
Reports the last epoch and the best epoch (the overlay paper reports the best *test* epoch,
which selects the model on the test set; we report both and say which is which).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .knn import topk_accuracy

SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adam", "sgd", "lars")
LR_RULES = ("mae-budget",)
# MAE's probe: lr 0.1 x 16384/256 at batch 16384, 90 epochs of ImageNet-1k's 1,281,167 images
MAE_PROBE_LR = 0.1 * 16384 / 256
MAE_PROBE_STEPS = 90 * 1281167 / 16384


def mae_budget_lr(steps: int) -> float:
    """The LARS lr whose sum over ``steps`` equals MAE's probe's (6.4 x ~7,038 steps): same schedule
    shape (warm-up, cosine), so the same total relative movement of the head's weight."""
    return MAE_PROBE_LR * MAE_PROBE_STEPS / max(1, int(steps))


def resolve_lr(lr: float | str, steps: int, optimizer: str) -> float:
    """An absolute lr, or a rule's value (``"mae-budget"``: LARS only) for a probe of ``steps`` steps."""
    if isinstance(lr, str):
        if lr not in LR_RULES:
            raise UserError(f"linear probe lr must be a number > 0 or one of {', '.join(LR_RULES)}, got {lr!r}")
        if optimizer != "lars":
            raise UserError(f"linear probe lr={lr} is a LARS rule (MAE's probe); with optimizer {optimizer} give "
                            "a number")
        return mae_budget_lr(steps)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        raise UserError(f"linear probe lr must be a number > 0 or one of {', '.join(LR_RULES)}, got {lr!r}")
    return float(lr)


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                 epochs: int = 100, lr: float | str = 1e-3, batch_size: int = 256, weight_decay: float = 0.0,
                 optimizer: str = "adam", seed: int = 0, standardize: bool = True,
                 schedule: str = "cosine", head_bn: bool = False, warmup_epochs: float = 0.0,
                 init_std: float | None = None) -> dict[str, Any]:
    """Train ``Linear(D, num_classes)`` on features; return top-1/top-5 per epoch, best and last.

    ``head_bn``: ``BatchNorm1d(D, affine=False, eps=1e-6)`` before the linear layer (batch statistics
    while training, running ones at test). ``lars``: LARS with momentum 0.9 (trust ratio on the weight,
    not the bias, as MAE's), from ``unveil.optim``. ``warmup_epochs``: a linear warm-up per step
    before the schedule (MAE's probe: 10). ``init_std``: the head's weight drawn from a normal truncated
    at ±2 std and a zero bias (MAE's probe: 0.01); None keeps PyTorch's default initialisation.
    ``lr``: a number, or ``"mae-budget"`` (``mae_budget_lr`` of this probe's steps); the result's
    ``lr_used`` is the value used."""
    _check_probe_settings(schedule, optimizer, warmup_epochs, epochs, init_std)
    g = torch.Generator().manual_seed(seed)
    train_x, test_x = train_x.float(), test_x.float()
    if standardize:
        mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    head, linear = _probe_head(train_x.shape[1], num_classes, seed, init_std, head_bn)
    steps_per_epoch = max(1, -(-len(train_x) // batch_size))
    total, warmup = epochs * steps_per_epoch, int(round(warmup_epochs * steps_per_epoch))
    lr = resolve_lr(lr, total, optimizer)
    opt = _probe_optimizer(head, linear, optimizer, lr, weight_decay)
    sched = _probe_schedule(opt, schedule, warmup, total)
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
            "best_top5": best["top5"], "best_epoch": best["epoch"], "epochs": epochs, "lr_used": lr, "history": history}


def _check_probe_settings(schedule: str, optimizer: str, warmup_epochs: float, epochs: int,
                          init_std: float | None) -> None:
    if schedule not in SCHEDULES:
        raise UserError(f"linear probe schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if optimizer not in OPTIMIZERS:
        raise UserError(f"linear probe optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, (int, float)) or not 0 <= warmup_epochs <= epochs:
        raise UserError(f"linear probe warmup_epochs must be a number in [0, epochs={epochs}], got {warmup_epochs!r}")
    if init_std is not None and (isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or init_std <= 0):
        raise UserError(f"linear probe init_std must be a number > 0 (or null: PyTorch's default), got {init_std!r}")


def _probe_head(dim: int, num_classes: int, seed: int, init_std: float | None,
                head_bn: bool) -> tuple[nn.Module, nn.Linear]:
    """The head (BatchNorm without affine first when ``head_bn``) and its linear layer, seeded."""
    torch.manual_seed(seed)
    linear = nn.Linear(dim, num_classes)
    if init_std is not None:  # MAE's main_linprobe.py: trunc_normal_(head.weight, std=0.01), zero bias
        nn.init.trunc_normal_(linear.weight, std=float(init_std), a=-2 * init_std, b=2 * init_std)
        nn.init.zeros_(linear.bias)
    head: nn.Module = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear) if head_bn else linear
    return head, linear


def _probe_optimizer(head: nn.Module, linear: nn.Linear, optimizer: str, lr: float,
                     weight_decay: float) -> torch.optim.Optimizer:
    if optimizer == "sgd":
        return torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    if optimizer == "lars":
        from ..optim import LARS

        return LARS([{"params": [linear.weight], "lars": True},
                     {"params": [linear.bias], "lars": False, "weight_decay": 0.0}],
                    lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)


def _probe_schedule(opt: torch.optim.Optimizer, schedule: str, warmup: int,
                    total: int) -> torch.optim.lr_scheduler.LRScheduler:
    if warmup:  # MAE's util/lr_sched.py, per step: linear warm-up, then half a cosine to 0 (or constant)
        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if schedule == "constant":
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
