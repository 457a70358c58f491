"""SimCLR ResNet-18 images/s on one device: unveil vs lightly vs the bare backbone (gpu-check part b).

For each size (32 px: CIFAR stem, batch 512; 224 px: standard stem, batch 256, halved on
out-of-memory and said so), bf16 autocast + channels_last, real CIFAR-10 images (decoded at the size),
these contenders take turns in rounds (order rotating per round; warm-up steps untimed, cuDNN
autotuning on as the engine configures it; ``torch.cuda.synchronize`` before and after each timed
stretch; median over rounds, ratios computed inside each round):

* ``unveil full``   the engine's own step (``engine.prepare`` + ``engine.train_step`` + the method's
                    ``after_optimizer_step``), on uint8 batches already on the device: the two
                    views are drawn on the device inside the step (what ``unveil pretrain`` runs,
                    minus the host-to-device copy, which the loader overlaps with the step)
* ``unveil views``  the same step with the view pipeline replaced by pre-made views
                    (``bench_siamese._CycleViews``; the convention of ``bench_siamese.py``)
* ``lightly``       lightly 1.6's SimCLR (``SimCLRProjectionHead(512, 2048, 128)``, ``NTXentLoss``
                    at unveil's temperature, SGD as unveil's recipe) on the same backbone and the same
                    pre-made views, as its docs run it (default memory format, bf16 autocast)
* ``lightly cl``    the same with the backbone and views in channels_last (separates memory format)
* ``floor``         the backbone alone: forward + backward + SGD on the 2B pre-made views

Images/s counts dataset images (each makes two views). Markdown + CSV + JSON under ``--out``.

    python3 benchmarks/bench_gpu.py --device cuda --out OUT
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --tiny --out /tmp/bench_gpu   # CI
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import unveil  # noqa: F401
except ImportError:  # a checkout without `pip install -e .` (the GPU machine): run from src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_siamese import _CycleViews  # noqa: E402

from unveil.build import build_method_for  # noqa: E402
from unveil.config import resolve  # noqa: E402
from unveil.io import atomic_write_text  # noqa: E402
from unveil.precision import autocast  # noqa: E402

COLUMNS = ["size", "stem", "batch", "contender", "images_per_s", "min", "max", "vs_lightly", "vs_floor", "note"]


class Timed:
    """A contender: ``run(steps)`` returns images/s with the device synchronised around the timer."""

    def __init__(self, name: str, batch: int, step: Callable[[], None], device: torch.device):
        self.name, self.batch, self.step, self.device = name, batch, step, device

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, steps: int) -> float:
        self._sync()
        t = time.perf_counter()
        for _ in range(steps):
            self.step()
        self._sync()
        return steps * self.batch / (time.perf_counter() - t)


def _cfg(size: int, batch: int, device: str, tmp: Path, name: str) -> dict:
    subset = max(4 * batch, 64)  # a few distinct batches; decoded at `size`
    over = [f"train.batch_size={batch}", f"data.subset={subset}", "data.test_subset=64", f"train.device={device}",
            "train.precision=bf16", "train.channels_last=true", "train.monitor=none", "train.progress=false",
            "train.compile=false", f"out={tmp / name}"]
    if size != 32:
        over += [f"data.image_size={size}", f"backbone.cifar_stem={'true' if size <= 32 else 'false'}"]
    return resolve("simclr_cifar10", over)


def contenders(size: int, batch: int, device: torch.device, tmp: Path, with_lightly: bool) -> list[Timed]:
    """Build every contender for one size (raises torch.cuda.OutOfMemoryError for the caller to halve)."""
    from unveil.train import engine

    cfg = _cfg(size, batch, device.type, tmp, f"full-{size}-{batch}")
    run = engine.prepare(cfg)
    assert run.precision == "bf16", run.precision
    n_batches = min(4, len(run.batches))
    it = run.batches.epoch(0)
    batches = [tuple(t.to(device) for t in next(it)) for _ in range(n_batches)]
    after = getattr(run.method, "after_optimizer_step", None)
    run.model.train()
    state = {"i": 0}

    def full() -> None:
        images, labels = batches[state["i"] % n_batches]
        state["i"] += 1
        engine.train_step(run, images, labels, run.base_lr)
        run.step += 1
        if after is not None:
            after(run.step % max(run.total_steps, 1), run.total_steps)

    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        views = [run.method.views(batches[0][0], g) for _ in range(2)]
    out: list[Timed] = [Timed("unveil full", batch, full, device)]

    run_v = engine.prepare({**cfg, "out": str(tmp / f"views-{size}-{batch}")})
    run_v.method.views = _CycleViews(views)
    run_v.model.train()
    images0, labels0 = batches[0]

    def premade() -> None:
        engine.train_step(run_v, images0, labels0, run_v.base_lr)

    out.append(Timed("unveil views", batch, premade, device))
    t = cfg["train"]
    sgd = {"lr": run.base_lr, "momentum": t["momentum"], "weight_decay": t["weight_decay"]}
    if with_lightly:
        for channels_last in (False, True):
            out.append(_lightly(cfg, run.dataset, views, sgd, device, batch, channels_last))
    out.append(_floor(cfg, run.dataset, views, sgd, device, batch))
    return out


def _lightly(cfg: dict, dataset: Any, views: list[Tensor], sgd: dict, device: torch.device, batch: int,
             channels_last: bool) -> Timed:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    m = cfg["method"]
    backbone = build_method_for(cfg, dataset).backbone  # the same torchvision ResNet-18 (fc = Identity)
    head = SimCLRProjectionHead(512, int(m.get("proj_hidden_dim", 2048)), int(m.get("proj_dim", 128)))
    model = nn.Sequential(backbone, nn.Flatten(1), head).to(device)
    x0, x1 = views
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x0, x1 = (v.contiguous(memory_format=torch.channels_last) for v in views)
    else:
        x0, x1 = (v.contiguous() for v in views)
    criterion = NTXentLoss(temperature=float(m.get("temperature", 0.5)))
    optimizer = torch.optim.SGD(model.parameters(), **sgd)
    model.train()

    def step() -> None:
        with autocast(device, "bf16"):
            loss = criterion(model(x0), model(x1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return Timed("lightly cl" if channels_last else "lightly", batch, step, device)


def _floor(cfg: dict, dataset: Any, views: list[Tensor], sgd: dict, device: torch.device, batch: int) -> Timed:
    backbone = build_method_for(cfg, dataset).backbone.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(backbone.parameters(), **sgd)
    x = torch.cat(views).contiguous(memory_format=torch.channels_last)
    backbone.train()

    def step() -> None:
        with autocast(device, "bf16"):
            loss = backbone(x).float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return Timed("floor", batch, step, device)


def measure(cs: list[Timed], rounds: int, steps: int, warmup: int, log: Callable[[str], None]) -> list[dict[str, float]]:
    for c in cs:
        c.run(warmup)
    results = []
    for r in range(rounds):
        k = r % len(cs)
        order = cs[k:] + cs[:k]
        results.append({c.name: c.run(steps) for c in order})
        log(f"  round {r + 1}: " + ", ".join(f"{n} {v:.0f}" for n, v in results[-1].items()))
    return results


def rows_for(size: int, batch: int, rounds: list[dict[str, float]], note: str) -> list[dict[str, Any]]:
    rows = []
    for name in rounds[0]:
        vals = [rd[name] for rd in rounds]

        def ratio(other: str, name: str = name) -> float | None:
            if other not in rounds[0]:
                return None
            return round(statistics.median(rd[name] / rd[other] for rd in rounds), 3)

        rows.append({"size": size, "stem": "cifar" if size <= 32 else "standard", "batch": batch, "contender": name,
                     "images_per_s": round(statistics.median(vals), 1), "min": round(min(vals), 1),
                     "max": round(max(vals), 1), "vs_lightly": ratio("lightly"), "vs_floor": ratio("floor"),
                     "note": note})
    return rows


def write(out: Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "bench_gpu.json", json.dumps({**header, "rows": rows}, indent=2))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "bench_gpu.csv", buf.getvalue())
    lines = [f"SimCLR ResNet-18 training step, images/s ({header['gpu']}; torch {header['torch']}; lightly "
             f"{header['lightly']}; {header['date']}; bf16 autocast; median of {header['rounds']} rounds x "
             f"{header['steps']} steps, order rotating; ratios per round, median)", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join("" if r[c] is None else str(r[c]) for c in COLUMNS) + " |")
    atomic_write_text(out / "bench_gpu.md", "\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="CI: sizes 32:16 and 64:8, 2 rounds x 1 step, 1 warm-up")
    p.add_argument("--sizes", default=None, help="size:batch,... (default 32:512,224:256)")
    p.add_argument("--rounds", type=int, default=None, help="default 5 (--tiny: 2)")
    p.add_argument("--steps", type=int, default=None, help="steps per contender per round (default 5; --tiny: 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per contender (default 3; --tiny: 1)")
    p.add_argument("--no-lightly", action="store_true")
    args = p.parse_args()
    sizes = args.sizes or ("32:16,64:8" if args.tiny else "32:512,224:256")
    rounds = args.rounds or (2 if args.tiny else 5)
    steps = args.steps or (1 if args.tiny else 5)
    warmup = args.warmup or (1 if args.tiny else 3)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        import lightly
        lightly_version = lightly.__version__
    except ImportError:
        lightly_version = "not installed"
    with_lightly = lightly_version != "not installed" and not args.no_lightly
    gpu = (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible") if device.type == "cuda" \
        else f"cpu ({torch.get_num_threads()} threads)"
    header = {"gpu": gpu, "torch": torch.__version__, "lightly": lightly_version, "python": sys.version.split()[0],
              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "rounds": rounds, "steps": steps, "warmup": warmup}
    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    failed = False
    start = time.perf_counter()
    for item in sizes.split(","):
        size, batch = (int(v) for v in item.split(":"))
        note, t_size = "", time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bench_gpu-") as tmp:
            while True:
                cs: list[Timed] = []
                try:
                    print(f"bench_gpu: {size} px, batch {batch}", flush=True)
                    cs = contenders(size, batch, device, Path(tmp), with_lightly)
                    rows += rows_for(size, batch, measure(cs, rounds, steps, warmup, print), note)
                    break
                except torch.cuda.OutOfMemoryError:
                    cs.clear()
                    gc.collect()
                    torch.cuda.empty_cache()
                    if batch <= 8:
                        raise
                    note = f"batch {batch} ran out of GPU memory; halved"
                    print(f"bench_gpu: {note}", flush=True)
                    batch //= 2
                except Exception as exc:  # noqa: BLE001 - one size failing still leaves the other's rows
                    failed = True
                    rows.append({c: None for c in COLUMNS} | {"size": size, "batch": batch, "contender": "failed",
                                                              "note": f"{type(exc).__name__}: {exc}".splitlines()[0]})
                    import traceback
                    traceback.print_exc()
                    break
                finally:
                    del cs
                    gc.collect()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
        header.setdefault("wall_s_per_size", {})[str(size)] = round(time.perf_counter() - t_size, 1)
        write(out, header, rows)
    header["wall_s"] = round(time.perf_counter() - start, 1)
    write(out, header, rows)
    print((out / "bench_gpu.md").read_text(), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
