"""Two-branch training steps (issue #9), contenders interleaved in short rounds as ``bench_train.py``.

Two parts, each a set of contenders that take turns in rounds (order rotating per round; every
ratio is computed inside each round, then the median and min–max over rounds are reported):

``compare`` — MoCo v2 and BYOL steps, unveil vs lightly 1.6, on **pre-made views** (2 x B views
drawn once by unveil's view pipeline from real CIFAR-10 images; only the step is timed):

* ``unveil moco`` / ``unveil byol``: the engine's own step (``engine.prepare`` builds the run,
  ``engine.train_step`` + ``after_optimizer_step`` each step, as ``engine._loop``), with the
  method's view pipeline replaced by a stub that hands out the pre-made views. MoCo v2 =
  ``mocov2_cifar10`` with ``bn_splits=1 shuffle_bn=false`` (lightly's example has neither);
  BYOL = ``byol_cifar10_solo`` (solo-learn's recipe; ``byol_cifar10`` before 2026-12-04) with SGD (lightly's
  example optimizer) instead of LARS.
* ``lightly moco``: lightly's MoCo example: ``MoCoProjectionHead(512, 512, 128)`` (unveil's v2
  head sizes since issue 17; the 2026-11-30 figures were taken with 2048-wide heads on both sides), momentum copies with ``deactivate_requires_grad``, ``update_momentum(m=0.99)``,
  ``NTXentLoss(temperature=0.2, memory_bank_size=(4096, 128))`` (its ``MemoryBankModule`` queue).
* ``lightly byol``: lightly's BYOL example: ``BYOLProjectionHead(512, 4096, 256)``,
  ``BYOLPredictionHead(256, 4096, 256)``, momentum copies, ``NegativeCosineSimilarity``, the
  symmetric loss from two passes of B (so does unveil since issue 17; the 2026-11-30 figures were taken
  when unveil ran one pass of 2B); ``update_momentum(m=0.99)``.

Same torchvision ResNet-18 with the CIFAR stem (built by unveil for each contender), batch,
precision and views; SGD lr 0.06, momentum 0.9, wd 5e-4 everywhere. unveil keeps its default
channels_last; lightly runs as its docs do (as in ``bench_train.py``).

``overhead`` — what MSCN masking and image mixtures add to a step, through the engine
(``engine.prepare`` / ``engine.train_step`` on real CIFAR-10 batches, views included):
``mscn_simclr_7_multimask`` and ``mscn_simclr_4_noise`` vs ``simclr_cifar10``; ``moco_cutmix``,
``moco_unmix``, ``mixdet_a1``, ``mixdet_a2`` vs ``moco_cifar10`` (each recipe as shipped, batch and
data size from the command line).

    .venv/bin/python benchmarks/bench_siamese.py --threads 1 --batch-size 32 --rounds 4 --steps 1 \\
        --json benchmarks/results/2026-11-30-bench_siamese.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import Contender, _autocast, cpu_description, engine_step, spread  # noqa: E402

from unveil.build import build_method_for  # noqa: E402
from unveil.config import resolve  # noqa: E402
from unveil.data import load_data  # noqa: E402

SGD = {"lr": 0.06, "momentum": 0.9, "weight_decay": 5e-4}
MATCHED = {  # the unveil side of "compare": recipe + the settings that match lightly's examples
    "moco": ("mocov2_cifar10", ["method.bn_splits=1", "method.shuffle_bn=false"]),
    "byol": ("byol_cifar10_solo", ["train.optimizer=sgd", "train.lr=0.06", "train.scale_lr=false", "train.momentum=0.9",
                              "train.weight_decay=5e-4", "train.warmup_epochs=0"]),
}
OVERHEAD = [  # (contender, recipe, baseline contender)
    ("simclr", "simclr_cifar10", None), ("mscn_simclr_7_multimask", "mscn_simclr_7_multimask", "simclr"),
    ("mscn_simclr_4_noise", "mscn_simclr_4_noise", "simclr"),
    ("moco", "moco_cifar10", None), ("moco_cutmix", "moco_cutmix_cifar10", "moco"),
    ("moco_unmix", "moco_unmix_cifar10", "moco"), ("mixdet_a1", "mixdet_a1_cifar10", "moco"),
    ("mixdet_a2", "mixdet_a2_cifar10", "moco"),
]


def lscpu_model() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return "unknown (no lscpu)"


class _CycleViews(nn.Module):
    """Stands in for a method's view pipeline: hands out the pre-made views in turn, forever."""

    def __init__(self, views: list[Tensor]):
        super().__init__()
        self.views, self.i = views, 0

    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        v = self.views[self.i % len(self.views)]
        self.i += 1
        return v


def _cfg(recipe: str, overrides: list[str], batch: int, precision: str, tmp: Path, name: str) -> dict:
    return resolve(recipe, [*overrides, f"train.batch_size={batch}", "data.subset=1024", "data.test_subset=64",
                            f"train.precision={precision}", "train.device=cpu", "train.monitor=none",
                            "train.progress=false", f"out={tmp / name}"])


def make_engine(name: str, cfg: dict, views: list[Tensor] | None = None) -> Contender:
    """The engine's step as ``engine._loop`` makes it (minus logging and checkpoints); with
    ``views`` the method's view pipeline hands out those instead of drawing new ones."""
    from unveil.train import engine

    run = engine.prepare(cfg)
    if views is not None:
        run.method.views = _CycleViews(views)
    c = Contender(name, run.batch_size, engine_step(run))
    c.precision = run.precision  # type: ignore[attr-defined]
    return c


def _frozen_copy(module: nn.Module) -> nn.Module:
    from lightly.models.utils import deactivate_requires_grad

    target = copy.deepcopy(module)
    deactivate_requires_grad(target)
    return target


def make_lightly_moco(cfg: dict, dataset, precision: str, batch: int, views: list[Tensor]) -> Contender:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.models.utils import update_momentum

    backbone = build_method_for(cfg, dataset).backbone
    head = MoCoProjectionHead(512, 512, 128)
    backbone_m, head_m = _frozen_copy(backbone), _frozen_copy(head)
    criterion = NTXentLoss(temperature=0.2, memory_bank_size=(4096, 128))
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, **SGD)
    x_query, x_key = views

    def step() -> None:
        update_momentum(backbone, backbone_m, m=0.99)
        update_momentum(head, head_m, m=0.99)
        with _autocast(precision):
            query = head(backbone(x_query).flatten(start_dim=1))
            with torch.no_grad():
                key = head_m(backbone_m(x_key).flatten(start_dim=1)).detach()
            loss = criterion(query, key)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return Contender("lightly moco", batch, step)


def make_lightly_byol(cfg: dict, dataset, precision: str, batch: int, views: list[Tensor]) -> Contender:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import update_momentum

    backbone = build_method_for(cfg, dataset).backbone
    proj, pred = BYOLProjectionHead(512, 4096, 256), BYOLPredictionHead(256, 4096, 256)
    backbone_m, proj_m = _frozen_copy(backbone), _frozen_copy(proj)
    criterion = NegativeCosineSimilarity()
    optimizer = torch.optim.SGD([*backbone.parameters(), *proj.parameters(), *pred.parameters()], **SGD)
    x0, x1 = views

    def online(x: Tensor) -> Tensor:
        return pred(proj(backbone(x).flatten(start_dim=1)))

    @torch.no_grad()
    def target(x: Tensor) -> Tensor:
        return proj_m(backbone_m(x).flatten(start_dim=1)).detach()

    def step() -> None:
        update_momentum(backbone, backbone_m, m=0.99)
        update_momentum(proj, proj_m, m=0.99)
        with _autocast(precision):
            p0, p1, z0, z1 = online(x0), online(x1), target(x0), target(x1)
            loss = 0.5 * (criterion(p0, z1) + criterion(p1, z0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return Contender("lightly byol", batch, step)


def interleave(contenders: list[Contender], rounds: int, steps: int, log) -> tuple[list[dict[str, float]], list[float]]:
    for c in contenders:  # warm-up, untimed (allocator, oneDNN kernels, first-touch)
        c.run(1)
    results, loads = [], []
    for r in range(rounds):
        k = r % len(contenders)
        order = contenders[k:] + contenders[:k]
        load = os.getloadavg()[0]
        results.append({c.name: c.run(steps) for c in order})
        loads.append(round((load + os.getloadavg()[0]) / 2, 1))
        log(f"round {r + 1} (load {loads[-1]}): " + ", ".join(f"{n} {v:.2f}" for n, v in results[-1].items()))
    return results, loads


def tables(title: str, contenders: list[Contender], rounds: list[dict[str, float]], loads: list[float],
           pairs: list[tuple[str, str]], log) -> None:
    log(f"\n{title} (images/s: median of {len(rounds)} rounds, min–max; 1-min load average during the rounds "
        f"{min(loads)}–{max(loads)} on {os.cpu_count()} cores)\n")
    log("| contender | images/s | min–max |\n|---|---:|---:|")
    for c in contenders:
        vals = [rd[c.name] for rd in rounds]
        log(f"| {c.name} | {statistics.median(vals):.2f} | {min(vals):.2f}–{max(vals):.2f} |")
    log("\n| ratio of images/s (per round) | median | min–max |\n|---|---:|---:|")
    for a, b in pairs:
        ratios = [rd[a] / rd[b] for rd in rounds]
        log(f"| {a} / {b} | {statistics.median(ratios):.2f} | {spread(ratios)} |")
    log("")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["compare", "overhead"], choices=["compare", "overhead"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=1, help="steps per contender per round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                   help="for compare; overhead runs at the first")
    p.add_argument("--contiguous", action="store_true",
                   help="compare: also unveil with train.channels_last=false (lightly's examples keep the default "
                        "memory format), to separate the memory format from the rest of the step")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default; 1 on a shared box)")
    p.add_argument("--json", help="also write every round's raw figures here")
    p.add_argument("--md", help="also write the printed report here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lines: list[str] = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    import lightly

    versions = f"torch {torch.__version__}, lightly {lightly.__version__}"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    log(f"# lscpu: {lscpu_model()}; {cpu_description()}\n# {versions}; HEAD {head}; {time.strftime('%Y-%m-%d %H:%M %Z')}; "
        f"load average at start {os.getloadavg()}; {args.rounds} rounds x {args.steps} steps per contender, "
        f"batch {args.batch_size}, order rotating per round\n")
    raw: dict = {"cpu": lscpu_model(), "cpu_description": cpu_description(), "versions": versions, "head": head,
                 "args": vars(args), "blocks": []}
    tmp = Path(tempfile.mkdtemp(prefix="bench_siamese-"))
    batch = args.batch_size
    try:
        if "compare" in args.parts:
            dataset = load_data("cifar10", subset=1024, test_subset=64)
            contenders, pairs = [], []
            for precision in args.precisions:
                for kind, (recipe, overrides) in MATCHED.items():
                    cfg = _cfg(recipe, overrides, batch, precision, tmp, f"{kind}-{precision}")
                    method = build_method_for(cfg, dataset)
                    g = torch.Generator().manual_seed(0)
                    with torch.no_grad():
                        views = [method.views(dataset.train.images[:batch], g) for _ in range(2)]
                    c = make_engine(f"unveil {kind} {precision}", cfg, views)
                    assert c.precision == precision, (c.precision, precision)  # type: ignore[attr-defined]
                    maker = make_lightly_moco if kind == "moco" else make_lightly_byol
                    lc = maker(cfg, dataset, precision, batch, views)
                    lc.name = f"lightly {kind} {precision}"
                    contenders += [c, lc]
                    pairs.append((c.name, lc.name))
                    if args.contiguous:
                        cc = make_engine(f"unveil {kind} {precision} contiguous",
                                         _cfg(recipe, [*overrides, "train.channels_last=false"], batch, precision, tmp,
                                              f"{kind}-{precision}-contiguous"), views)
                        contenders.append(cc)
                        pairs += [(cc.name, lc.name), (c.name, cc.name)]
            rounds, loads = interleave(contenders, args.rounds, args.steps, log)
            tables(f"MoCo v2 and BYOL steps on pre-made views, ResNet-18 CIFAR stem, 32 px, batch {batch}",
                   contenders, rounds, loads, pairs, log)
            raw["blocks"].append({"part": "compare", "rounds": rounds, "load": loads})
        if "overhead" in args.parts:
            precision = args.precisions[0]
            contenders, pairs = [], []
            for name, recipe, base in OVERHEAD:
                contenders.append(make_engine(name, _cfg(recipe, [], batch, precision, tmp, name)))
                if base is not None:
                    pairs.append((name, base))
            rounds, loads = interleave(contenders, args.rounds, args.steps, log)
            tables(f"Engine steps with views, each recipe as shipped, {precision}, batch {batch} "
                   "(a ratio below 1 = slower than its base)", contenders, rounds, loads, pairs, log)
            raw["blocks"].append({"part": "overhead", "precision": precision, "rounds": rounds, "load": loads})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))
    if args.md:
        Path(args.md).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
