"""Defaults vs defaults on a 64 px ImageFolder: ``unveil pretrain`` vs lightly's SimCLR recipe, runs alternating.

Each round runs, in an order that rotates from round to round, two fresh processes on the same folder:

* ``unveil``   ``unveil pretrain --data FOLDER --method simclr`` with unveil's defaults; only
               ``train.max_steps`` (a short run), ``train.log_every_steps`` and ``train.progress`` are set.
               images/s comes from the run's step log (``log.csv``, first row skipped: warm-up); the
               per-epoch kNN monitor runs at the end of the short run as at the end of every epoch, and
               its time is the ``monitor_s`` the engine writes to the run's ``metrics.csv`` (epoch >= 1; the
               once-per-run untrained-encoder baseline, an epoch-0 row, is reported apart).
               Share of a whole epoch = monitor s / (steps_per_epoch x batch / images/s + monitor s)
               (the engine's own ``monitor_share`` refers to the short run's partial epoch).
* ``lightly``  the recipe of lightly's docs example (torchvision ResNet-18 without fc,
               ``SimCLRProjectionHead(512, 512, 128)``, ``NTXentLoss()``, SGD lr 0.06, unveil's batch
               (256 by default, as the example), ``SimCLRTransform`` with ``input_size`` = 64, the
               images' size (the transform's default is 224)) on the flat copy of the folder via
               ``LightlyDataset``, 2 loader workers; fp32 as in the example; images/s over the steps
               after the first min(5, steps - 1) (warm-up, worker start).

The unveil decode cache is filled once before the rounds (a first run decodes the JPEGs; later
runs read the cache, as a user's second run would).

    .venv/bin/python benchmarks/bench_folder.py --folder /tmp/h3/cifar64 --rounds 3 --steps 8 --log-every 4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def lightly_child(flat: str, steps: int, skip: int, batch: int, workers: int, size: int, result: str) -> None:
    """In a fresh process: lightly's docs example loop on the flat folder, timed per step."""
    import torch
    import torchvision
    from lightly.data import LightlyDataset
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from torch import nn

    class SimCLR(nn.Module):
        def __init__(self, backbone: nn.Module) -> None:
            super().__init__()
            self.backbone = backbone
            self.projection_head = SimCLRProjectionHead(512, 512, 128)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.projection_head(self.backbone(x).flatten(start_dim=1))

    t0 = time.perf_counter()
    resnet = torchvision.models.resnet18()
    model = SimCLR(nn.Sequential(*list(resnet.children())[:-1]))
    dataset = LightlyDataset(flat, transform=SimCLRTransform(input_size=size))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers)
    criterion = NTXentLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    times, tick = [], time.perf_counter()
    for i, ((x0, x1), _, _) in enumerate(loader):
        loss = criterion(model(x0), model(x1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        now = time.perf_counter()
        times.append(now - tick)
        tick = now
        if i + 1 >= steps:
            break
    timed = times[skip:]
    Path(result).write_text(json.dumps({"images_per_s": batch * len(timed) / sum(timed), "step_s": times,
                                        "wall_s": time.perf_counter() - t0}))


def run_child(command: list[str], env: dict[str, str], log: Path) -> float:
    t = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.call(command, env=env, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"child failed ({code}); see {log}")
    return time.perf_counter() - t


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_lightly":
        a = sys.argv[2:]
        return lightly_child(a[0], int(a[1]), int(a[2]), int(a[3]), int(a[4]), int(a[5]), a[6])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", required=True, help="FOLDER with train/ and val/ class folders; FOLDER-flat beside it")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=15, help="steps per run, each contender")
    p.add_argument("--log-every", type=int, default=5, help="unveil's train.log_every_steps (first row skipped)")
    p.add_argument("--workers", type=int, default=2, help="lightly's DataLoader workers (its docs use 8; 2 cores here)")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for both children (0: leave as is)")
    p.add_argument("--work", default=None, help="run directories and logs (default: a temporary folder)")
    p.add_argument("--json", help="write the raw figures here")
    p.add_argument("overrides", nargs="*", help="extra unveil overrides, e.g. backbone.cifar_stem=false")
    args = p.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from bench_train import cpu_description

    from unveil.config import resolve
    from unveil.data import load_data
    from unveil.runs.checkpoint import CONFIG_NAME
    from unveil.runs.logs import EPOCH_LOG, STEP_LOG, read_csv

    folder, flat = str(Path(args.folder).resolve()), str(Path(args.folder).resolve()) + "-flat"
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_folder-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = resolve(None, [f"data.name={folder}", "method.name=simclr", *args.overrides])
    t = time.perf_counter()
    dataset = load_data(folder)  # fills the decode cache (the first run's decode is not part of the rate)
    decode_s = time.perf_counter() - t
    batch = cfg["train"]["batch_size"]
    if not isinstance(batch, int):  # train.batch_size: auto
        from unveil.train.engine import auto_batch_size

        batch = auto_batch_size(len(dataset.train.images))[0]
    steps_per_epoch = len(dataset.train.images) // batch
    print(f"# {cpu_description()}\n# threads for both: {env.get('OMP_NUM_THREADS', 'default')}; "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {len(dataset.train.images)} train / {len(dataset.test.images)} val images, "
          f"{dataset.image_size} px; unveil batch {batch}, {steps_per_epoch} steps/epoch; "
          f"data load (decode or cache) {decode_s:.1f} s\n", flush=True)
    unveil_over = [f"train.max_steps={args.steps}", f"train.log_every_steps={args.log_every}", "train.progress=false",
                   *args.overrides]
    rounds = []
    for r in range(args.rounds):
        order = ["unveil", "lightly"] if r % 2 == 0 else ["lightly", "unveil"]
        row: dict = {}
        for who in order:
            load = os.getloadavg()[0]
            if who == "unveil":
                out = work / f"unveil-{r}"
                command = [str(Path(sys.executable).parent / "unveil"), "pretrain", "--data", folder, "--method", "simclr",
                           "--out", str(out), *unveil_over]
                wall = run_child(command, env, work / f"unveil-{r}.log")
                first = (work / f"unveil-{r}.log").read_text().splitlines()[0]
                said = re.search(r"batch (\d+).*?(\d+) steps/epoch", first)
                if said and (int(said[1]), int(said[2])) != (batch, steps_per_epoch):
                    print(f"note: the run chose batch {said[1]}, {said[2]} steps/epoch (expected {batch}, "
                          f"{steps_per_epoch}); using the run's", flush=True)
                    batch, steps_per_epoch = int(said[1]), int(said[2])
                logged = read_csv(out / STEP_LOG)
                rate = statistics.median(x["images_per_s"] for x in logged[1:])
                epochs = read_csv(out / EPOCH_LOG)  # an epoch-0 row, when present, is the untrained-encoder baseline
                monitor = sum(x["monitor_s"] for x in epochs if x["epoch"] and x["epoch"] >= 1)
                baseline = sum(x["monitor_s"] for x in epochs if not x["epoch"])
                epoch_train = steps_per_epoch * batch / rate
                row["unveil"] = {"images_per_s": rate, "monitor_s": monitor, "baseline_monitor_s": baseline,
                                 "epoch_train_s": epoch_train,
                                 "monitor_share": monitor / (epoch_train + monitor), "wall_s": wall,
                                 "logged": [x["images_per_s"] for x in logged]}
                resolved = (out / CONFIG_NAME).read_text() if (out / CONFIG_NAME).exists() else ""
                row["unveil"]["config_excerpt"] = [ln for ln in resolved.splitlines() if "stem" in ln or "precision" in ln]
                row["unveil"]["first_lines"] = (work / f"unveil-{r}.log").read_text().splitlines()[:2]
            else:
                res = work / f"lightly-{r}.json"
                wall = run_child([sys.executable, str(HERE), "_lightly", flat, str(args.steps), str(min(5, args.steps - 1)), str(batch), str(args.workers),
                                  str(dataset.image_size), str(res)], env, work / f"lightly-{r}.log")
                row["lightly"] = {**json.loads(res.read_text()), "wall_s": wall}
            row[who]["load"] = round((load + os.getloadavg()[0]) / 2, 1)
            print(f"round {r + 1} {who}: " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                                         for k, v in row[who].items() if k not in ("step_s", "logged")}),
                  flush=True)
        row["unveil_over_lightly"] = row["unveil"]["images_per_s"] / row["lightly"]["images_per_s"]
        rounds.append(row)
    print("\n| round | unveil defaults img/s | lightly recipe img/s | unveil / lightly | kNN monitor s | "
          "epoch training s (est.) | monitor share of epoch | load |\n|---|---:|---:|---:|---:|---:|---:|---|")
    for i, row in enumerate(rounds):
        u, lt = row["unveil"], row["lightly"]
        print(f"| {i + 1} | {u['images_per_s']:.1f} | {lt['images_per_s']:.1f} | {row['unveil_over_lightly']:.2f} | "
              f"{u['monitor_s']:.1f} | {u['epoch_train_s']:.0f} | {100 * u['monitor_share']:.1f} % | "
              f"{u['load']} / {lt['load']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_description(), "rounds": rounds, "args": vars(args),
                                               "steps_per_epoch": steps_per_epoch, "batch": batch}, indent=2))


if __name__ == "__main__":
    main()
