"""Why MoCo with lightly's values (τ 0.1, symmetric loss) collapsed in unveil and not in lightly (issue #17).

Trains a few steps on the learning-parity subset (5,000 CIFAR-10 images, torchvision ResNet-18 with the standard
stem, batch 256, constant lr, fp32, one seed) and prints the loss and the mean pairwise cosine of the queue's keys
every 5 steps. A queue whose keys have cosine ~1 and a loss at log(K + 1) per direction is collapsed.

* ``lightly``: lightly's benchmark MoCo as ``learning_parity.py`` builds it (its bank is updated after *each*
  direction of the symmetric loss, so the second direction's negatives include the first direction's fresh keys).
* ``lightly-after-both``: the same model with the bank updated once after both directions (MoCo's code, unveil).
* ``lightly-after-both-prefill``: that, with the bank filled with real keys before the first step.
* ``unveil-random`` / ``unveil-data``: unveil's ``mocov2_cifar10`` with lightly's values (τ 0.1, lr 0.06: unveil
  sums the two directions where lightly averages them, so this equals lightly's step at 0.12) and
  ``method.queue_init=random`` (MoCo's code) or ``data`` (unveil's default).

    UNVEIL_CIFAR10=../shared/data/cifar10 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/moco_queue_diag.py \\
        lightly lightly-after-both lightly-after-both-prefill unveil-random unveil-data --steps 60
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import learning_parity as lp  # noqa: E402

TAU, QUEUE, BATCH = 0.1, 4096, 256


def mean_cos(keys: Tensor) -> float:
    keys = F.normalize(keys.float(), dim=1)
    return float((keys @ keys.T).mean())


def run_lightly(variant: str, steps: int) -> None:
    from lightly.models import utils

    data = lp.load_subset(5000, None, 0)
    torch.manual_seed(0)
    model = lp.LightlyMoCo()
    bank = model.criterion.memory_bank  # its buffer is (size, dim)

    def keys_of(x: Tensor) -> Tensor:
        return model.projection_head_momentum(model.backbone_momentum(x).flatten(1))

    def loader(seed: int) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(lp._PILDataset(data.train.images, lp.lightly_transform("mocov2")),
                                           batch_size=BATCH, shuffle=True, drop_last=True,
                                           generator=torch.Generator().manual_seed(seed))

    if variant.endswith("prefill"):
        with torch.no_grad():
            n = 0
            for _, x1 in loader(1):
                bank._dequeue_and_enqueue(F.normalize(keys_of(x1), dim=1))
                n += BATCH
                if n >= QUEUE:
                    break

    def after_both(x0: Tensor, x1: Tensor) -> Tensor:
        utils.update_momentum(model.backbone, model.backbone_momentum, 0.99)
        utils.update_momentum(model.projection_head, model.projection_head_momentum, 0.99)

        def step(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
            b, shuffle = utils.batch_shuffle(b, distributed=False)
            q = model.projection_head(model.backbone(a).flatten(1))
            return F.normalize(q, dim=1), F.normalize(utils.batch_unshuffle(keys_of(b), shuffle, distributed=False), dim=1)

        (q0, k1), (q1, k0) = step(x0, x1), step(x1, x0)
        negatives = bank.bank.clone().detach().T  # stored (size, dim)

        def nce(q: Tensor, k: Tensor) -> Tensor:
            logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives], 1) / TAU
            return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))

        loss = 0.5 * (nce(q0, k1) + nce(q1, k0))
        bank._dequeue_and_enqueue(k1.detach())
        bank._dequeue_and_enqueue(k0.detach())
        return loss

    training_step = model.training_step if variant == "lightly" else after_both
    opt = torch.optim.SGD(model.trainable(), lr=6e-2 * BATCH / 128, momentum=0.9, weight_decay=5e-4)
    model.train()
    s, start = 0, time.time()
    while s < steps:
        for x0, x1 in loader(0):
            loss = training_step(x0, x1)
            loss.backward()
            opt.step()
            opt.zero_grad()
            s += 1
            if s % 5 == 0:
                print(f"{variant} step {s} loss {float(loss.detach()):.4f} queue cos {mean_cos(bank.bank):.4f} "
                      f"({time.time() - start:.0f} s)", flush=True)
            if s >= steps:
                break


def run_unveil(variant: str, steps: int, runs: Path) -> None:
    from unveil.config import resolve
    from unveil.runs.checkpoint import load_checkpoint
    from unveil.runs.logs import read_csv
    from unveil.train.engine import train

    out = runs / variant
    overrides = [f"out={out}", "data.name=cifar10", "data.subset=5000", "data.split_seed=0", "train.epochs=100",
                 f"train.max_steps={steps}", f"train.batch_size={BATCH}", "backbone.cifar_stem=false", "train.monitor=none",
                 "train.progress=false", "train.log_every_steps=5", "train.seed=0", "train.schedule=constant",
                 f"method.temperature={TAU}", "train.lr=0.06", "method.symmetric=true", "train.precision=fp32",
                 f"method.queue_init={variant.removeprefix('unveil-')}"]
    train(resolve("mocov2_cifar10", overrides))
    for row in read_csv(out / "log.csv"):
        print(f"{variant} step {row['step']} loss {float(row['loss']):.4f} (sum of the two directions)")
    keys = load_checkpoint(out / "last.ckpt")["model"]["queue.keys"]
    print(f"{variant} queue cos after step {steps}: {mean_cos(keys):.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    variants = ("lightly", "lightly-after-both", "lightly-after-both-prefill", "unveil-random", "unveil-data")
    parser.add_argument("variants", nargs="+", choices=variants)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--runs", default="runs/moco-queue-diag", help="unveil's run directories")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for variant in args.variants:
        if variant.startswith("unveil"):
            run_unveil(variant, args.steps, Path(args.runs))
        else:
            run_lightly(variant, args.steps)


if __name__ == "__main__":
    main()
