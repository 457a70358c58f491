"""What ``--resume`` guarantees on this device, measured: an interrupted run resumed from its
mid-epoch checkpoint vs the same run uninterrupted, with and without ``train.deterministic``.

    python scripts/resume_check.py --device cuda --data CIFAR10_PARQUET_DIR --out DIR

The run is stopped by an exception one step after a mid-epoch checkpoint (as a crash would stop
it; the checkpoint on disk is all that survives), then resumed in the same process. For every
tensor of the final state (weights, buffers, optimizer) it reports whether the two runs agree bit
for bit, and the largest absolute difference. Writes resume.md and resume.json under --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from unveil.config import resolve
from unveil.runs.checkpoint import CKPT_NAME, load_checkpoint
from unveil.train import engine


class _Crash(Exception):
    pass


def _flat(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if torch.is_tensor(value):
            out[name] = value
        elif isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        elif isinstance(value, list):
            out.update(_flat(dict(enumerate(value)), f"{name}."))
    return out


def _compare(reference: dict, resumed: dict) -> dict:
    a = _flat({"model": reference["model"], "optimizer": reference["optimizer"]})
    b = _flat({"model": resumed["model"], "optimizer": resumed["optimizer"]})
    same = sum(torch.equal(a[k], b[k]) for k in a)
    worst = max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel() and
                 a[k].is_floating_point()), default=0.0)
    return {"tensors": len(a), "bit_identical": same, "max_abs_diff": worst, "steps": int(resumed["step"])}


def check(method: str, device: str, deterministic: bool, out: Path, data: str, subset: int = 1024,
          batch: int = 128, extra: list[str] | None = None) -> dict:
    """Eight steps (subset / batch), a checkpoint every 3, interrupted at the 5th."""
    overrides = [f"method.name={method}", f"data.name={data}", f"data.subset={subset}", "data.test_subset=256",
                 f"train.batch_size={batch}", "train.epochs=1", "train.ckpt_every_steps=3", "train.monitor=none",
                 "train.progress=false", f"train.device={device}", f"train.deterministic={str(deterministic).lower()}",
                 *(extra or [])]
    runs = {}
    for name in ("full", "part"):
        shutil.rmtree(out / name, ignore_errors=True)
        cfg = resolve(None, [*overrides, f"out={out / name}"])
        if name == "full":
            engine.train(cfg)
            continue
        step_fn = engine._train_step
        calls = {"n": 0}

        def crashing(run, images, labels, lr, _step=step_fn, _calls=calls):
            _calls["n"] += 1
            if _calls["n"] == 5:  # the 5th step: the checkpoint of step 3 survives, step 4 is lost
                raise _Crash
            return _step(run, images, labels, lr)

        engine._train_step = crashing
        try:
            engine.train(cfg)
        except _Crash:
            pass
        finally:
            engine._train_step = step_fn
        saved = int(load_checkpoint(out / name / CKPT_NAME)["step"])
        engine.train(cfg, resume=out / name)
        runs["resumed_from"] = saved
    result = _compare(load_checkpoint(out / "full" / CKPT_NAME), load_checkpoint(out / "part" / CKPT_NAME))
    return {"method": method, "deterministic": deterministic, "resumed_from_step": runs["resumed_from"], **result}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data", required=True, help="CIFAR-10 Parquet folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--methods", default="simclr")
    ap.add_argument("--subset", type=int, default=1024, help="training images; with --batch: 8 steps by default")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every run (--tiny on a CPU: backbone.cifar_stem=false)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in args.methods.split(","):
        for deterministic in (False, True):
            t0 = time.perf_counter()
            try:
                row = check(method, args.device, deterministic, args.out / f"{method}-{int(deterministic)}", args.data,
                            args.subset, args.batch, args.override)
            except Exception as exc:  # one failing mode must not hide the other's result
                row = {"method": method, "deterministic": deterministic, "error": f"{type(exc).__name__}: {exc}"[:300]}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else "cpu"
    lines = [f"# --resume on {name} (torch {torch.__version__}, {time.strftime('%Y-%m-%d')})", "",
             "| method | train.deterministic | resumed from step | tensors bit-identical | max abs diff | s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['deterministic']} | failed: {r['error']} | | | {r['seconds']} |")
        else:
            lines.append(f"| {r['method']} | {r['deterministic']} | {r['resumed_from_step']} | "
                         f"{r['bit_identical']} / {r['tensors']} | {r['max_abs_diff']:.3g} | {r['seconds']} |")
    (args.out / "resume.md").write_text("\n".join(lines) + "\n")
    (args.out / "resume.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
