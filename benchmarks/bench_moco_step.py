"""Where a MoCo step's time goes (issue 17, item 4): MoCo steps against a SimCLR step, interleaved.

On the first GPU run 2 epochs of ``moco_cifar10`` took 12.8 s against 5.9 s for ``simclr_cifar10``,
though a MoCo step makes fewer encoder passes (query forward + backward on one view, key forward)
than a SimCLR step (forward + backward on two views): by passes a MoCo step should cost ~0.67 of a
SimCLR step (backward = 2 forwards). Contenders, each the engine's own step (``engine.prepare`` +
``engine.train_step``, real CIFAR-10 batches, views included, ``bench_siamese.make_engine``), same
batch, precision and memory format (channels_last, the engine's default):

* ``simclr``: ``simclr_cifar10``;
* ``moco``: ``moco_cifar10`` as shipped (SplitBatchNorm, 8 splits, shuffle-BN, queue 4096);
* ``moco view-trick BN``: the same, with every SplitBatchNorm running the official code's view trick
  (``(B, C, H, W)`` viewed as ``(B/8, 8C, H, W)``: a copy on channels_last tensors, weights and
  running statistics repeated per layer), i.e. unveil's SplitBatchNorm before issue 17;
* ``moco plain BN``: ``method.bn_splits=1`` (the floor for split BN's cost);
* ``moco no shuffle``: ``method.shuffle_bn=false`` (what shuffle-BN costs).

Each round runs every contender for ``--steps`` steps (order rotating per round) after one untimed
warm-up step; per round the seconds per step of each contender are divided by SimCLR's, and the
median (min-max) over rounds is reported. ``--profile`` also prints the top operators of one step
of ``moco``, ``moco view-trick BN`` and ``simclr`` (torch.profiler, CPU).

    UNVEIL_CIFAR10=/work/shared/data/cifar10 .venv/bin/python benchmarks/bench_moco_step.py --threads 1 \\
        --batch-size 32 --rounds 7 --profile
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_siamese import _cfg, lscpu_model  # noqa: E402
from bench_train import Contender, cpu_description, engine_step, spread  # noqa: E402

from unveil.backbones.split_bn import SplitBatchNorm  # noqa: E402

CONTENDERS = [  # name, recipe, overrides, view-trick BN
    ("simclr", "simclr_cifar10", [], False),
    ("moco", "moco_cifar10", [], False),
    ("moco view-trick BN", "moco_cifar10", [], True),
    ("moco plain BN", "moco_cifar10", ["method.bn_splits=1"], False),
    ("moco no shuffle", "moco_cifar10", ["method.shuffle_bn=false"], False),
]


def view_trick_forward(self: SplitBatchNorm, x: Tensor) -> Tensor:
    """SplitBatchNorm.forward before issue 17 (the official code's): split n mod s via one view."""
    if not self.training or self.num_splits == 1:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
    n, c, h, w = x.shape
    s = self.num_splits
    mean_split, var_split = self.running_mean.repeat(s), self.running_var.repeat(s)
    out = F.batch_norm(x.reshape(n // s, c * s, h, w), mean_split, var_split, self.weight.repeat(s),
                       self.bias.repeat(s), True, self.momentum if self.momentum is not None else 0.1, self.eps)
    self.running_mean.copy_(mean_split.view(s, c).mean(dim=0))
    self.running_var.copy_(var_split.view(s, c).mean(dim=0))
    self.num_batches_tracked.add_(1)
    return out.reshape(n, c, h, w)


def make(name: str, cfg: dict, view_trick: bool) -> Contender:
    """The engine's step (as ``bench_siamese.make_engine``); with ``view_trick`` every SplitBatchNorm of
    the run (query and key encoders) runs ``view_trick_forward`` (same parameters and buffers, so the
    optimizer and EMA are untouched)."""
    from unveil.train import engine

    run = engine.prepare(cfg)
    if view_trick:
        for m in run.method.modules():
            if isinstance(m, SplitBatchNorm):
                m.forward = types.MethodType(view_trick_forward, m)
    return Contender(name, run.batch_size, engine_step(run))


def profile(contender: Contender, log) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        contender.run(1)
    log(f"\n### profile: {contender.name}, one step\n\n```")
    log(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=36))
    log("```")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=1, help="steps per contender per round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--standard-stem", action="store_true", help="the 7x7/2 stem + max-pool (faster on CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default; 1 on a shared box)")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--md", help="also write the printed report here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lines: list[str] = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    log(f"# lscpu: {lscpu_model()}; {cpu_description()}\n# torch {torch.__version__}; HEAD {head}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; load average at start {os.getloadavg()}; {args.rounds} rounds x "
        f"{args.steps} steps, batch {args.batch_size}, {args.precision}, channels_last, "
        f"{'standard' if args.standard_stem else 'CIFAR'} stem, {torch.get_num_threads()} thread(s)\n")
    tmp = Path(tempfile.mkdtemp(prefix="bench_moco_step-"))
    stem = ["backbone.cifar_stem=false"] if args.standard_stem else []
    try:
        contenders = []
        for name, recipe, overrides, trick in CONTENDERS:
            cfg = _cfg(recipe, [*overrides, *stem], args.batch_size, args.precision, tmp, name.replace(" ", "_"))
            contenders.append(make(name, cfg, trick))
        for c in contenders:
            c.run(1)  # warm-up, untimed
        rounds, loads = [], []
        for r in range(args.rounds):
            k = r % len(contenders)
            load = os.getloadavg()[0]
            rounds.append({c.name: args.steps * c.batch / c.run(args.steps) / args.steps
                           for c in contenders[k:] + contenders[:k]})  # seconds per step
            loads.append(round((load + os.getloadavg()[0]) / 2, 1))
            log(f"round {r + 1} (load {loads[-1]}): " + ", ".join(f"{n} {v:.3f} s" for n, v in rounds[-1].items()))
        log("\n| contender | s/step (median, min–max) | / simclr step (per round: median, min–max) |\n|---|---:|---:|")
        for c in contenders:
            secs = [rd[c.name] for rd in rounds]
            ratios = [rd[c.name] / rd["simclr"] for rd in rounds]
            log(f"| {c.name} | {statistics.median(secs):.3f} ({spread(secs)}) | "
                f"{statistics.median(ratios):.2f} ({spread(ratios)}) |")
        for a, b in (("moco", "moco view-trick BN"), ("moco", "moco plain BN")):
            ratios = [rd[a] / rd[b] for rd in rounds]
            log(f"\n{a} step / {b} step (per round): median {statistics.median(ratios):.2f} ({spread(ratios)})")
        log(f"\n1-min load average during the rounds {min(loads)}–{max(loads)} on {os.cpu_count()} cores")
        if args.profile:
            for c in contenders:
                if c.name in ("moco", "moco view-trick BN", "simclr"):
                    profile(c, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.md:
        Path(args.md).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
