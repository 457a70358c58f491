"""SimCLR training throughput, contenders interleaved in short rounds (these shared machines wander ~2x in minutes).

For each backbone (CIFAR-stem ResNet-18, standard-stem ResNet-18) at 32 px on real CIFAR-10 images,
at fp32 and bf16 autocast, these contenders take turns:

* ``floor``    the bare backbone forward+backward+SGD step on ready views (2B views made once by
               unveil's view pipeline from real images): what any SimCLR step must at least cost
* ``unveil``   unveil's engine step itself: the run built by the engine's own phase functions and each
               step ``unveil.train.engine.train_step`` on the next ``TensorBatches`` batch (lr, autocast,
               the method's forward = device-side views, backbone, projector, NT-Xent; backward, step)
* ``views``    unveil's input side alone: ``TensorBatches`` gather + the method's two view draws
               (no model), to see what the views cost next to the floor
* ``lightly``  lightly's SimCLR as its docs' example builds it (``SimCLRTransform`` in a DataLoader,
               ``SimCLRProjectionHead(512, 512, 128)``, ``NTXentLoss()``, SGD lr 0.06), same backbone,
               batch and images; a fresh DataLoader iterator per round (its first batch untimed), so
               its workers never run during another contender's turn

A round runs every contender for ``--steps`` steps, in an order that rotates from round to round;
``--rounds`` rounds. Reported per contender: median images/s over rounds and min–max; per ratio
(e.g. unveil/floor): the ratio inside each round (same minutes, same machine load), median and
min–max. Images/s counts dataset images (each makes two views). channels_last as unveil's default.

    .venv/bin/python benchmarks/bench_train.py --rounds 5 --steps 2 --batch-size 128
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from unveil.build import build_method_for
from unveil.config import resolve
from unveil.data import load_data
from unveil.optim import lr_at
from unveil.train.loader import TensorBatches

PRECISIONS = ("fp32", "bf16")


def cpu_description() -> str:
    """The library's machine line (model, cores, threads, bf16 units), printed beside every figure."""
    from unveil.precision import machine_description

    return machine_description()


def _autocast(precision: str):
    """bf16 autocast for the floor and lightly, as unveil's engine applies it to its own step."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


class Contender:
    """Set up once; ``run(steps)`` returns images/s over that many steps."""

    def __init__(self, name: str, batch: int, step: Callable[[], None], before: Callable[[], None] | None = None,
                 after: Callable[[], None] | None = None):
        self.name, self.batch, self.step, self.before, self.after = name, batch, step, before, after

    def run(self, steps: int) -> float:
        if self.before:
            self.before()
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        rate = steps * self.batch / (time.perf_counter() - t)
        if self.after:
            self.after()
        return rate


def make_floor(cfg: dict, dataset, precision: str, batch: int) -> Contender:
    """The least a SimCLR step can cost: the backbone alone on 2B ready views (no views, head or loss)."""
    method = build_method_for(cfg, dataset).to(memory_format=torch.channels_last)
    backbone = method.backbone
    t = cfg["train"]
    opt = torch.optim.SGD(backbone.parameters(), lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    g = torch.Generator().manual_seed(0)
    images = dataset.train.images[:batch]
    with torch.no_grad():
        x = torch.cat([method.views(images, g), method.views(images, g)]).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with _autocast(precision):
            loss = backbone(x).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return Contender(f"floor {precision}", batch, step)


class _Batches:
    """Endless (images, labels) batches from unveil's own TensorBatches, epoch after epoch."""

    def __init__(self, batches: TensorBatches):
        self.batches = batches
        self.epoch, self.it = 0, self.batches.epoch(0)

    def next(self):
        try:
            return next(self.it)
        except StopIteration:
            self.epoch += 1
            self.it = self.batches.epoch(self.epoch)
            return next(self.it)


def make_unveil(cfg: dict, precision: str, batch: int, tmp: Path) -> Contender:
    """unveil's engine step itself: the engine's own phases build the run (data, model with its
    channels_last input hook, seeded batches, optimizer over the method's param groups), and each
    step is ``engine.train_step`` (lr, zero_grad, autocast, method forward = device-side views +
    backbone + projector + NT-Xent, backward, optimizer step) as ``engine._loop`` calls it, minus
    logging and checkpoints."""
    from unveil.train import engine

    run_cfg = {**cfg, "out": str(tmp / f"unveil-{precision}"),
               "train": {**cfg["train"], "precision": precision, "device": "cpu", "monitor": "none", "progress": False}}
    run = engine.prepare(run_cfg)
    assert run.precision == precision and run.batches.batch_size == batch
    return Contender(f"unveil {precision}", batch, engine_step(run))


def engine_step(run) -> Callable[[], None]:  # noqa: ANN001 - an engine run (engine.prepare)
    """One training step of a prepared run as ``engine._loop`` makes it (next seeded batch, the
    scheduled lr, ``engine.train_step``, the method's ``after_optimizer_step``), minus logging and
    checkpoints; the run is put in train mode."""
    from unveil.train import engine

    after_step = getattr(run.method, "after_optimizer_step", None)
    batches = _Batches(run.batches)
    run.model.train()

    def step() -> None:
        images, labels = batches.next()
        lr = lr_at(run.step % run.total_steps, run.total_steps, run.steps_per_epoch, run.base_lr, run.t)
        engine.train_step(run, images.to(run.device), labels.to(run.device), lr)
        run.step += 1
        if after_step is not None:
            after_step(run.step, run.total_steps)

    return step


def make_views(cfg: dict, dataset, batch: int) -> Contender:
    method = build_method_for(cfg, dataset)
    batches = _Batches(TensorBatches(dataset.train.images, dataset.train.labels, batch, seed=0))
    generator = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def step() -> None:
        images, _ = batches.next()
        method.views(images, generator), method.views(images, generator)

    return Contender("views", batch, step)


def lightly_available() -> bool:
    try:
        import lightly  # noqa: F401
    except ImportError:
        return False
    return True


def make_lightly(cfg: dict, dataset, precision: str, batch: int, workers: int) -> Contender:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from PIL import Image
    from torch import nn

    backbone = build_method_for(cfg, dataset).backbone  # the same torchvision ResNet-18 (fc = Identity)

    class SimCLR(nn.Module):  # lightly's docs example model
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimCLRProjectionHead(512, 512, 128)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.projection_head(self.backbone(x).flatten(start_dim=1))

    model = SimCLR()
    transform = SimCLRTransform(input_size=dataset.image_size)

    class PILImages(Dataset):  # what torchvision.datasets.CIFAR10(transform=...) hands the loader
        def __len__(self) -> int:
            return len(dataset.train.images)

        def __getitem__(self, i: int):
            return transform(Image.fromarray(dataset.train.images[i].permute(1, 2, 0).numpy())), int(dataset.train.labels[i])

    loader = DataLoader(PILImages(), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers)
    criterion = NTXentLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    state: dict = {}

    def before() -> None:  # fresh workers each round; the first batch (worker start-up) is not timed
        state["it"] = iter(loader)
        state["first"] = next(state["it"])

    def step() -> None:
        (x0, x1), _ = state.pop("first", None) or next(state["it"])
        with _autocast(precision):
            loss = criterion(model(x0), model(x1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def after() -> None:
        state.clear()  # drops the iterator: its workers stop before the next contender runs

    return Contender(f"lightly {precision}", batch, step, before, after)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}–{max(values):.2f}" if len(values) > 1 else "–"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="steps per contender per round")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--cifar-batch-size", type=int, default=None, help="batch for the CIFAR-stem rows (default: --batch-size)")
    p.add_argument("--workers", type=int, default=2, help="lightly's DataLoader workers (its docs use 8; this box has 2 cores)")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--stems", nargs="+", default=["cifar", "standard"], choices=["cifar", "standard"])
    p.add_argument("--no-lightly", action="store_true")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads (0 = torch's default). On a loaded 2-core box, 1 thread avoids OpenMP barrier "
                        "stalls that made 2-thread rates 5-10x lower and erratic (2026-11-30)")
    p.add_argument("--json", help="also write every round's raw figures here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_data("cifar10", subset=4096, test_subset=256)
    with_lightly = lightly_available() and not args.no_lightly
    versions = f"torch {torch.__version__}"
    if with_lightly:
        import lightly

        versions += f", lightly {lightly.__version__}"
    print(f"# {cpu_description()}\n# {versions}; {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"{args.rounds} rounds x {args.steps} steps per contender, order rotating per round\n", flush=True)
    raw: dict = {"cpu": cpu_description(), "versions": versions, "args": vars(args), "blocks": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench_train-"))
    for stem in args.stems:
        batch = (args.cifar_batch_size or args.batch_size) if stem == "cifar" else args.batch_size
        cfg = resolve("simclr_cifar10", [f"backbone.cifar_stem={stem == 'cifar'}", "data.name=cifar10",
                                         f"train.batch_size={batch}", "data.subset=4096"])
        contenders = []
        for precision in args.precisions:
            contenders += [make_floor(cfg, dataset, precision, batch), make_unveil(cfg, precision, batch, tmp)]
            if with_lightly:
                contenders.append(make_lightly(cfg, dataset, precision, batch, args.workers))
        contenders.append(make_views(cfg, dataset, batch))
        for c in contenders:  # warm-up, untimed (allocator, oneDNN kernels, first-touch)
            c.run(1)
        rounds: list[dict[str, float]] = []
        loads: list[float] = []
        for r in range(args.rounds):
            k = r % len(contenders)
            order = contenders[k:] + contenders[:k]
            load = os.getloadavg()[0]
            rounds.append({c.name: c.run(args.steps) for c in order})
            loads.append(round((load + os.getloadavg()[0]) / 2, 1))
            print(f"round {r + 1} (load {loads[-1]}): " + ", ".join(f"{n} {v:.1f}" for n, v in rounds[-1].items()), flush=True)
        name = "ResNet-18 CIFAR stem" if stem == "cifar" else "ResNet-18 standard stem"
        print(f"\n{name}, 32 px, batch {batch} (images/s: median of {args.rounds} rounds, min–max; "
              f"1-min load average during the rounds {min(loads)}–{max(loads)} on {os.cpu_count()} cores)\n")
        print("| contender | images/s | min–max |\n|---|---:|---:|")
        for c in contenders:
            vals = [rd[c.name] for rd in rounds]
            print(f"| {c.name} | {statistics.median(vals):.1f} | {min(vals):.1f}–{max(vals):.1f} |")
        pairs = []
        for precision in args.precisions:
            pairs.append((f"unveil {precision}", f"floor {precision}"))
            if with_lightly:
                pairs += [(f"unveil {precision}", f"lightly {precision}"), (f"lightly {precision}", f"floor {precision}")]
        if len(args.precisions) == 2:
            pairs += [("floor bf16", "floor fp32"), ("unveil bf16", "unveil fp32")]
            if with_lightly:
                pairs += [("lightly bf16", "lightly fp32"), ("unveil bf16", "lightly fp32")]
        print("\n| ratio (per round) | median | min–max |\n|---|---:|---:|")
        for a, b in pairs:
            ratios = [rd[a] / rd[b] for rd in rounds]
            print(f"| {a} / {b} | {statistics.median(ratios):.2f} | {spread(ratios)} |")
        print(flush=True)
        raw["blocks"].append({"stem": stem, "batch": batch, "rounds": rounds, "load": loads})
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))


if __name__ == "__main__":
    main()
