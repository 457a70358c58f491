"""One training step of every registered method through the real engine (gpu-check part a).

Each method starts from its recipe (the method's ``default_recipe``, else a shipped recipe whose
``method.name`` matches, else the defaults), on real CIFAR-10 (``data.subset`` images), built by
``unveil.train.engine.prepare`` exactly as ``unveil pretrain`` builds it (the engine's default path:
bf16 autocast where the device has it, channels_last), then stepped with ``engine.train_step``:
one warm-up step (cuDNN autotuning, allocator), then one timed step (synchronised on CUDA).
``--compile`` adds rows with ``train.compile=true`` (first step = compilation, timed separately).

Per row: ok / failed (the error's last line) / timeout (a compile row past the budget left) / skipped, the loss and whether it is finite, the warm-up and
step times, and the peak GPU memory. A failing method never stops the others; the tables
(steps.md / steps.csv / steps.json under ``--out``) are rewritten after every row, so a run cut
short by a timeout keeps what it finished. Exit code 0 only when every row is ok.

    python3 scripts/gpu_steps.py --device cuda --out OUT            # on the GPU machine
    .venv/bin/python scripts/gpu_steps.py --device cpu --tiny --out /tmp/steps   # CI
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import math
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

try:
    import unveil  # noqa: F401
except ImportError:  # a checkout without `pip install -e .` (the GPU machine): run from src/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from unveil.config import available_recipes, load_recipe, resolve
from unveil.errors import UserError
from unveil.io import atomic_write_text
from unveil.methods import METHODS, available

# Where several shipped recipes train a method, the one its paper's headline uses (the rest of the
# choice is generic: `<method>_cifar10`, then any CIFAR-10 recipe, then any recipe).
PREFERRED = {"denoising_ae": "overlay_cifar10", "context_patch_ae": "context_patch_cifar100"}
COLUMNS = ["method", "recipe", "compile", "status", "loss", "finite", "warmup_s", "step_s", "peak_mem_mib",
           "batch", "precision", "channels_last", "error"]


def recipe_for(method: str) -> str | None:
    """The recipe a method's step is built from (None: the defaults with ``method.name``)."""
    default = getattr(METHODS[method], "default_recipe", None)
    if default:
        return str(default)
    if method in PREFERRED and PREFERRED[method] in available_recipes():
        return PREFERRED[method]
    matching = [r for r in available_recipes()
                if str(load_recipe(r).get("method", {}).get("name", "simclr")) == method]
    if not matching:
        return None

    def rank(r: str) -> tuple:
        data = str(load_recipe(r).get("data", {}).get("name", "cifar10"))
        return (r != f"{method}_cifar10", data != "cifar10", "demo" in r, r)

    return sorted(matching, key=rank)[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class TimeLimit(Exception):
    """A row ran past its time limit (a torch.compile that takes longer than the budget left)."""


_ALARM = {"fired": False}


def _alarm(_signum: int, _frame: Any) -> None:
    _ALARM["fired"] = True  # torch.compile may wrap the exception (InductorError): the flag says what happened
    raise TimeLimit("did not finish in its time limit")


def one_method(method: str, compile_: bool, args: argparse.Namespace, tmp: Path, limit_s: int = 0) -> dict[str, Any]:
    """Build the run through the engine and time a warm-up step and one more; never raises.
    ``limit_s`` > 0: the row stops after that many seconds (status ``timeout``)."""
    from unveil.train import engine

    recipe = recipe_for(method)
    row: dict[str, Any] = {"method": method, "recipe": recipe or "(defaults)", "compile": compile_, "status": "failed",
                           "loss": None, "finite": False, "warmup_s": None, "step_s": None, "peak_mem_mib": None,
                           "batch": args.batch_size, "precision": "", "channels_last": "", "error": ""}
    run = None
    _ALARM["fired"] = False
    if limit_s > 0:
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(limit_s)
    try:
        overrides = [f"method.name={method}", "data.name=cifar10", f"data.subset={args.subset}",
                     f"data.test_subset={args.test_subset}", f"train.batch_size={args.batch_size}",
                     f"train.device={args.device}", "train.monitor=none", "train.progress=false", "train.epochs=1",
                     "train.accumulate_steps=1", f"train.compile={str(compile_).lower()}",
                     f"out={tmp / (method + ('-compiled' if compile_ else ''))}"]
        if args.precision:
            overrides.append(f"train.precision={args.precision}")
        cfg = resolve(recipe, overrides)
        device = torch.device(args.device)
        if device.type == "cuda" and torch.cuda.is_available():  # else prepare says so in one line
            torch.cuda.reset_peak_memory_stats()
        run = engine.prepare(cfg)
        row.update(precision=run.precision, channels_last=bool(run.t["channels_last"]), batch=run.batch_size)
        after = getattr(run.method, "after_optimizer_step", None)
        batches = run.batches.epoch(0)
        run.model.train()
        times, loss = [], None
        for i in range(2):  # warm-up, then the timed step
            images, labels = next(batches)
            images, labels = images.to(run.device), labels.to(run.device)
            _sync(run.device)
            t0 = time.perf_counter()
            loss, _ = engine.train_step(run, images, labels, run.base_lr)
            run.step = i + 1
            if after is not None:
                after(run.step, run.total_steps)
            _sync(run.device)
            times.append(time.perf_counter() - t0)
        value = float(loss.detach().float())  # type: ignore[union-attr]
        row.update(loss=value, finite=math.isfinite(value), warmup_s=round(times[0], 4), step_s=round(times[1], 4),
                   status="ok" if math.isfinite(value) else "failed")
        if not math.isfinite(value):
            row["error"] = f"loss is {value}"
        if run.device.type == "cuda":
            row["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except Exception as exc:  # noqa: BLE001 - one method's failure is a row, never the end of the others
        if _ALARM["fired"]:
            row.update(status="timeout", error=f"did not finish in the {limit_s} s left of --budget-s (compilation "
                                               "included)")
            return row
        lines = traceback.format_exc().strip().splitlines()
        where = next((ln.strip() for ln in reversed(lines) if ln.strip().startswith("File ")), "")
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''} [{where}]"
        # a UserError is already one line that says what to do; anything else gets its traceback in the log
        print(row["error"] if isinstance(exc, UserError) else traceback.format_exc(), file=sys.stderr, flush=True)
    finally:
        signal.alarm(0)
        del run
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return row


def write_tables(out: Path, rows: list[dict[str, Any]], header: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "steps.json", json.dumps({**header, "rows": rows}, indent=2))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "steps.csv", buf.getvalue())

    def cell(v: Any) -> str:
        text = "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)).replace("|", "\\|")
        return text if len(text) <= 160 else text[:157] + "..."  # the full error is in steps.csv/json

    lines = [f"One training step of every registered method ({header['device']}, torch {header['torch']}, "
             f"{header['gpu']}, {header['date']}): engine.prepare + engine.train_step on real CIFAR-10, "
             f"batch {header['batch_size']}; step_s is the second step (the first is the warm-up).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    atomic_write_text(out / "steps.md", "\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="CI settings: batch 16, 64 images, no compile rows")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (--tiny: 16)")
    p.add_argument("--subset", type=int, default=None, help="training images (default 512; --tiny: 64)")
    p.add_argument("--test-subset", type=int, default=64)
    p.add_argument("--precision", default=None, choices=["auto", "bf16", "fp32"], help="default: the engine's auto")
    p.add_argument("--methods", default=None, help="comma-separated (default: every registered method)")
    p.add_argument("--compile", default=None,
                   help="methods to step again with train.compile=true, comma-separated, '' for none "
                        "(default: simclr,mae on cuda, none on cpu)")
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="skip the compile rows once this many seconds are spent (0: no limit)")
    args = p.parse_args()
    args.batch_size = args.batch_size or (16 if args.tiny else 64)
    args.subset = args.subset or (64 if args.tiny else 512)
    if args.compile is None:
        args.compile = "simclr,mae" if args.device == "cuda" and not args.tiny else ""
    start = time.perf_counter()
    registered = available()  # imports every method module (fills the registry recipe_for reads)
    methods = args.methods.split(",") if args.methods else registered
    compiled = [m for m in args.compile.split(",") if m]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    header = {"device": args.device, "torch": torch.__version__, "gpu": gpu, "python": sys.version.split()[0],
              "date": time.strftime("%Y-%m-%d %H:%M %Z"), "batch_size": args.batch_size, "subset": args.subset}
    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpu_steps-") as tmp:
        for method, compile_ in [*((m, False) for m in methods), *((m, True) for m in compiled)]:
            # a compile row gets what is left of --budget-s (less 10 s to write the tables); under 30 s: skipped
            left = int(args.budget_s - (time.perf_counter() - start) - 10) if args.budget_s else 0
            if compile_ and args.budget_s and left < 30:
                rows.append({c: None for c in COLUMNS} | {"method": method, "compile": True, "status": "skipped",
                                                          "error": f"{args.budget_s:.0f} s budget spent"})
            else:
                print(f"gpu_steps: {method}{' (compile)' if compile_ else ''} ...", flush=True)
                rows.append(one_method(method, compile_, args, Path(tmp), left if compile_ else 0))
                r = rows[-1]
                print(f"gpu_steps: {method}: {r['status']} loss {r['loss']} step {r['step_s']} s "
                      f"peak {r['peak_mem_mib']} MiB {r['error']}", flush=True)
            write_tables(out, rows, header)
    header["wall_s"] = round(time.perf_counter() - start, 1)
    write_tables(out, rows, header)
    bad = [r["method"] + (" (compile)" if r["compile"] else "") + f": {r['status']}" for r in rows
           if r["status"] not in ("ok", "skipped")]
    print(f"gpu_steps: {sum(r['status'] == 'ok' for r in rows)} of {len(rows)} rows ok in {header['wall_s']} s"
          + (f"; not ok: {', '.join(bad)}" if bad else ""), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
