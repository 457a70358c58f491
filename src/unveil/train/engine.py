"""The one thin training wrapper that serves every method.

It owns what methods should not: devices, precision, the optimizer and schedule, gradient
clipping and accumulation, DDP, the data order, checkpoints, logs, the progress bar and the
per-epoch monitor. A method is any module following the contract in ``unveil.methods``.

``train`` reads as its phases: start (device, processes, run directory), data, model, optimizer,
restore (exact resume), announce, the loop of steps, and the end of each epoch (checkpoint first,
then the monitor, so a failing monitor loses nothing).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from .. import dist
from .. import methods as method_registry
from ..build import backbone_config, data_info_of, load_dataset_for
from ..config import save_resolved
from ..errors import UserError, require
from ..methods.settings import setting_default
from ..optim import build_optimizer, lr_at, set_lr
from ..precision import autocast, configure_kernels, pick_device, pick_precision
from ..runs.checkpoint import CKPT_NAME, CONFIG_NAME, load_checkpoint, save_checkpoint
from ..runs.logs import RunLogger
from ..runs.weights import build_untrained
from .loader import TensorBatches
from .monitor import has_labels, monitor_sizes, run_monitor, unlabelled_figures


def _channels_last_inputs(module: nn.Module) -> None:
    def hook(_m: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x, *args[1:])

    module.register_forward_pre_hook(hook)


def default_run_dir(cfg: dict[str, Any]) -> Path:
    data = Path(str(cfg["data"]["name"])).name or "data"
    return Path("runs") / f"{cfg['method']['name']}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class _Run:
    """Everything one training run holds, filled phase by phase."""

    cfg: dict[str, Any]
    device: torch.device
    precision: str
    rank: int
    world: int
    run_dir: Path
    ckpt_state: dict[str, Any] | None
    dataset: Any = None
    stem_note: str = ""
    method: nn.Module = None  # type: ignore[assignment]
    model: nn.Module = None  # type: ignore[assignment]  # the method, DDP-wrapped when distributed
    step_fn: Any = None
    batches: TensorBatches = None  # type: ignore[assignment]
    optimizer: torch.optim.Optimizer = None  # type: ignore[assignment]
    generator: torch.Generator = None  # type: ignore[assignment]
    base_lr: float = 0.0
    total_steps: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    logger: RunLogger = None  # type: ignore[assignment]
    labelled: bool = True
    batch_size: int = 0  # per process; train.batch_size, or what auto chose for the data
    batch_note: str = ""
    queue_note: str = ""
    fitted_method: dict[str, Any] | None = None

    @property
    def t(self) -> dict[str, Any]:
        return self.cfg["train"]

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batches)


def train(cfg: dict[str, Any], resume: str | Path | None = None) -> Path:
    """Train ``cfg`` (a resolved config); return the run directory."""
    run = _start(cfg, resume)
    _load_data(run)
    _build_model(run)
    _build_optimizer(run)
    _restore(run)
    _announce(run)
    _untrained_baseline(run)
    _prime(run)
    _loop(run)
    _finish(run)
    return run.run_dir


def prepare(cfg: dict[str, Any]) -> _Run:
    """A run built exactly as ``train`` builds it (data, method, optimizer), without training: for
    benchmarks and tools that drive the steps themselves with ``train_step``."""
    run = _start(cfg, None)
    _load_data(run)
    _build_model(run)
    _build_optimizer(run)
    return run


def train_step(run: _Run, images: Tensor, labels: Tensor, lr: float) -> tuple[Tensor, dict[str, Tensor]]:
    """One optimizer step of ``run`` on a batch already on its device (what the training loop calls)."""
    return _train_step(run, images, labels, lr)


def _start(cfg: dict[str, Any], resume: str | Path | None) -> _Run:
    """Device, process group, precision and the run directory (new, or the one to resume)."""
    t = cfg["train"]
    device = pick_device(t["device"])
    configure_kernels(device, t["deterministic"])
    dist.init_from_env(device)
    rank, world = dist.rank(), dist.world_size()
    if cfg["method"]["name"] not in method_registry.available():
        method_registry.build_method(cfg["method"]["name"])  # raises the one-line "unknown method" error
    ckpt_state = None
    if resume is not None:
        run_dir = Path(resume)
        ckpt_state = load_checkpoint(run_dir / CKPT_NAME)
    else:
        run_dir = Path(cfg["out"]) if cfg["out"] else default_run_dir(cfg)
        if world > 1:
            holder = [str(run_dir)]
            torch.distributed.broadcast_object_list(holder, src=0)
            run_dir = Path(holder[0])
        require(not (run_dir / CKPT_NAME).exists(),
                f"{run_dir} already holds a run: continue it with --resume {run_dir}, or choose another --out")
    return _Run(cfg={**cfg, "out": str(run_dir)}, device=device, precision=pick_precision(t["precision"], device),
                rank=rank, world=world, run_dir=run_dir, ckpt_state=ckpt_state)


def _load_data(run: _Run) -> None:
    """Every rank loads at once: the data layer's lock files let the first process on a cache folder
    decode and write it while the others wait (no barrier, so a build longer than the process
    group's timeout is fine), then read it; nodes with their own cache folder each build their own."""
    run.dataset = load_dataset_for(run.cfg)
    n, batch = len(run.dataset.train.images), run.t["batch_size"]
    if batch == "auto":
        run.batch_size, run.batch_note = auto_batch_size(n // run.world, run.t["accumulate_steps"])
    else:
        run.batch_size = batch
    require(n >= run.batch_size * run.world,
            f"train.batch_size={run.batch_size} x {run.world} process(es) is larger than the {n} training images: "
            "lower it (train.batch_size=auto fits it to the data) or use more data")
    require(run.batch_size % run.t["accumulate_steps"] == 0,
            f"batch {run.batch_size} is not a multiple of train.accumulate_steps={run.t['accumulate_steps']}")
    run.labelled = has_labels(run.dataset)
    # config.yaml keeps the recipe's queue_size (suites and compare match runs by their config); the checkpoint
    # holds the fitted queue, whose length KeyQueue adopts when a run is loaded
    run.fitted_method, run.queue_note = fit_queue_to_data(run.cfg["method"], n, run.batch_size * run.world)


QUEUE_DATA_SHARE = 0.25  # a MoCo queue may hold at most this share of the training set (see fit_queue_to_data)


def fit_queue_to_data(method: dict[str, Any], n_images: int, global_batch: int) -> tuple[dict[str, Any], str]:
    """A MoCo queue (MoCo, Un-Mix, MixDet) that holds much of the training set puts older keys of a query's own
    image among its negatives: over the 245 photos of the ants-and-bees folder 4,096 keys are 16 of each, and on
    a 5,000-image CIFAR-10 subset MixDet with 4,096 keys (82 %) collapsed (RankMe 2.8) where 1,024 keys (20 %)
    learned (kNN +3.8 over its untrained encoder; docs/results.md). MoCo's own CIFAR-10 setting keeps 8 % (4,096
    of 50,000). Lower a queue longer than ``QUEUE_DATA_SHARE`` of the data to the largest multiple of the global
    batch within it (at least one batch); a queue that fits is left as the recipe says. Like ``batch_size: auto``,
    the run's config.yaml keeps what the recipe says and the run's first line says what was used."""
    size = method.get("queue_size", _constructor_default(method.get("name"), "queue_size"))
    limit = int(n_images * QUEUE_DATA_SHARE)
    if not isinstance(size, int) or isinstance(size, bool) or size <= limit:
        return method, ""
    lowered = max(global_batch, limit // global_batch * global_batch)
    if lowered >= size:
        return method, ""
    share = f"{QUEUE_DATA_SHARE:.0%}"
    return {**method, "queue_size": lowered}, (f"method.queue_size lowered from {size} to {lowered}: a queue of more than "
                                                f"{share} of the {n_images} training images puts older keys of a "
                                                "query's own image among its negatives")


def _constructor_default(method_name: Any, setting: str) -> Any:
    """The default a registered method's constructor gives ``setting`` (None: no such method or setting): a config
    that leaves ``method.queue_size`` out (``unveil pretrain --method moco``) still gets MoCo's 4,096 keys."""
    if method_name not in method_registry.available():
        return None
    return setting_default(method_registry.METHODS[method_name], setting)


def auto_batch_size(images_per_rank: int, accumulate_steps: int = 1, default: int = 256) -> tuple[int, str]:
    """256 per process, or on small data the largest power of two that still gives an epoch at least
    two steps (a folder of 245 photos trains with batch 64 instead of stopping)."""
    batch = default
    while batch > max(2, accumulate_steps) and batch * 2 > images_per_rank:
        batch //= 2
    note = "" if batch == default else f"lowered from {default} so {images_per_rank} images make at least 2 steps an epoch"
    return batch, note


def _build_model(run: _Run) -> None:
    """The method (stem decided for the data), on the device, channels_last, DDP, compiled."""
    t = run.t
    torch.manual_seed(t["seed"])
    _, run.stem_note = backbone_config(run.cfg["backbone"], run.dataset.image_size)
    name = run.cfg["method"]["name"]
    require(run.labelled or not method_registry.METHODS[name].needs_labels,
            f"method {name} trains on labels, but {run.dataset.name} has none (a folder without class folders): "
            "give a folder of class folders, or use a self-supervised method such as simclr")
    # init_backbone's weights loaded and momentum copies (BYOL's target, MoCo's key encoder) restarted from them
    method = build_untrained({**run.cfg, "method": run.fitted_method or run.cfg["method"]}, data_info_of(run.dataset))
    if t["freeze_backbone"]:
        method.backbone.requires_grad_(False)
    method.to(run.device)
    if t["channels_last"]:
        method.to(memory_format=torch.channels_last)
        _channels_last_inputs(method.backbone)
    model: nn.Module = method
    sync_bn = t["sync_batchnorm"]
    if sync_bn == "auto":
        sync_bn = method.sync_batchnorm and run.device.type == "cuda"
    if sync_bn and run.world > 1:
        require(run.device.type == "cuda", "train.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm has no CPU "
                "path): on CPU set it to false, or use method.bn_splits where the method has it")
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        model = method
    if run.world > 1:
        ids = [dist.local_rank()] if run.device.type == "cuda" else None
        # methods whose buffers differ per rank by design (or are kept equal by the method, as MoCo's
        # gathered queue) say so: DDP would otherwise overwrite them with rank 0's every step
        sync = method.ddp_broadcast_buffers
        # torch >= 2.14 names it forward_sync_buffers (buffers still agree at start: the same seed)
        key = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else "broadcast_buffers")
        model = DistributedDataParallel(method, device_ids=ids, **{key: sync})
    run.method, run.model = method, model
    run.step_fn = torch.compile(model) if t["compile"] else model


def _build_optimizer(run: _Run) -> None:
    """Seeded batch order, the step budget, the lr scaled to the global batch, the optimizer."""
    t = run.t
    run.batches = TensorBatches(run.dataset.train.images, run.dataset.train.labels, run.batch_size, t["seed"],
                                run.rank, run.world)
    run.total_steps = run.steps_per_epoch * t["epochs"]
    if t["max_steps"]:
        run.total_steps = min(run.total_steps, t["max_steps"])
    global_batch = run.batch_size * run.world
    run.base_lr = t["lr"] * global_batch / 256 if t["scale_lr"] else t["lr"]
    run.optimizer = build_optimizer(run.method, t, run.base_lr)
    run.generator = torch.Generator(device=run.device).manual_seed(t["seed"] * 1000 + run.rank)


def _restore(run: _Run) -> None:
    """Exact resume: weights, optimizer, step, history, and every random stream."""
    state = run.ckpt_state
    if state is not None:
        run.method.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.step = int(state["step"])
        run.history = list(state.get("history", []))
        gens = state["generator"]
        require(len(gens) == run.world, f"this run was trained with {len(gens)} process(es); resume it with the same number")
        run.generator.set_state(gens[run.rank])
        torch.set_rng_state(state["cpu_rng"])
    run.logger = RunLogger(run.run_dir, enabled=run.rank == 0, resume_step=run.step if state else None)


def _announce(run: _Run) -> None:
    """Save the resolved config; the first lines say what runs, on what, with which stem and why."""
    if run.rank != 0:
        return
    run.run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(run.cfg, run.run_dir / CONFIG_NAME)
    ds, t = run.dataset, run.t
    labels = f"{ds.num_classes} classes" if run.labelled else "no labels"
    run.logger.info(f"run {run.run_dir}: {run.cfg['method']['name']} on {ds.name} ({len(ds.train.images)} images, "
                    f"{ds.image_size} px, {labels}), {run.world} process(es) on {run.device.type}, {run.precision}, "
                    f"batch {run.batch_size}{' (auto: ' + run.batch_note + ')' if run.batch_note else ''}, "
                    f"{run.steps_per_epoch} steps/epoch" + (f"; backbone {run.stem_note}" if run.stem_note else "")
                    + (f"; {run.queue_note}" if run.queue_note else ""))
    if t["monitor"] == "knn" and not run.labelled:
        run.logger.info("the data has no labels, so the kNN monitor is skipped: each epoch writes neighbours.png "
                        "(nearest training images of 8 test images; neighbours_untrained.png is the same before "
                        "training) in the run directory instead; for accuracy, evaluate on labelled data: "
                        f"unveil eval knn {run.run_dir} --eval-data LABELLED_FOLDER")

    elif t["monitor"] == "knn":
        bank, query = monitor_sizes(t, len(ds.train.images), len(ds.test.images))
        run.logger.info(f"kNN monitor every {t['monitor_every_epochs']} epoch(s): {bank} training images as the bank, "
                        f"{query} test images as queries (train.monitor_train_size / monitor_test_size)")


def _untrained_baseline(run: _Run) -> None:
    """Before the first step, the kNN monitor measures the untrained encoder (history row epoch 0),
    so every later number stands beside it; without labels it draws neighbours_untrained.png."""
    if run.step != 0 or run.total_steps == 0 or run.t["monitor"] != "knn":
        return
    row = _monitor(run, epoch_index=0, epoch_s=None)
    if row is not None and "knn_top1" in row:
        run.logger.info(f"untrained encoder: kNN top-1 {row['knn_top1']:.1f} % (the baseline for every epoch below)")


def _prime(run: _Run) -> None:
    """A fresh run's method fills what must start from data (MoCo's queue) from epoch 0's batches, before
    the first step, without gradients and in the run's precision; a resumed run has it in its checkpoint."""
    if run.ckpt_state is not None or run.step != 0 or run.total_steps == 0:
        return
    run.model.train()
    batches = (images for images, _ in run.batches.device_batches(0, 0, run.device, prefetch=0))
    with torch.no_grad(), autocast(run.device, run.precision):
        run.method.prime(batches, run.generator)


def _monitor(run: _Run, epoch_index: int, epoch_s: float | None) -> dict[str, Any] | None:
    """Run the monitor on rank 0, guarded (a failure is one warning line, never the run's end); the
    row is added to the history and the logs. Returns it on every rank (None: no row)."""
    t, row = run.t, None
    if run.rank == 0:
        start = time.perf_counter()
        try:
            if run.labelled or t["monitor"] != "knn":
                metrics = run_monitor(run.method, run.dataset, t, run.device, run.precision)
            else:
                metrics = unlabelled_figures(run.method, run.dataset, t, run.device, run.precision, run.run_dir,
                                             epoch_index, untrained=epoch_index == 0)
        except Exception as exc:  # noqa: BLE001 - the monitor must never cost the run
            message = str(exc).splitlines()[0] if str(exc) else ""
            which = "untrained-encoder" if epoch_index == 0 else f"epoch-{epoch_index}"
            print(f"unveil: warning: the {which} monitor failed ({type(exc).__name__}: {message}); training goes "
                  "on, every epoch's checkpoint is saved", file=sys.stderr)
        else:
            monitor_s = time.perf_counter() - start
            row = {"epoch": epoch_index, "step": run.step, **metrics, "monitor_s": round(monitor_s, 2)}
            if epoch_s is not None:
                row["monitor_share"] = round(monitor_s / max(epoch_s + monitor_s, 1e-9), 3)
            if epoch_index > 0 or run.labelled:  # the untrained grid of an unlabelled run is a figure, not a row
                run.history.append(row)
                run.logger.epoch(row)
    dist.barrier()
    run.model.train()
    if run.world > 1:  # the others learn whether rank 0 got a row (it decides the extra checkpoint)
        holder = [row]
        torch.distributed.broadcast_object_list(holder, src=0)
        row = holder[0]
    return row


def _train_step(run: _Run, images: Tensor, labels: Tensor, lr: float) -> tuple[Tensor, dict[str, Tensor]]:
    """One optimizer step over ``accumulate_steps`` micro-batches; returns (mean loss, last outputs)."""
    t = run.t
    set_lr(run.optimizer, lr)
    run.optimizer.zero_grad(set_to_none=True)
    parts = t["accumulate_steps"]
    losses = []
    for i, (x, y) in enumerate(zip(images.chunk(parts), labels.chunk(parts))):
        last = i == parts - 1
        sync = contextlib.nullcontext() if last or run.world == 1 else run.model.no_sync()
        with sync:
            with autocast(run.device, run.precision):
                out = run.step_fn(x, y, run.generator)
            loss = out["loss"]
            (loss if parts == 1 else loss / parts).backward()
        losses.append(loss.detach())
    if t["grad_clip_norm"]:
        out["grad_norm"] = torch.nn.utils.clip_grad_norm_(run.method.parameters(), t["grad_clip_norm"])
    run.optimizer.step()
    return (losses[0] if parts == 1 else torch.stack(losses).mean()), out


def _checkpoint(run: _Run) -> None:
    gens = [run.generator.get_state()]
    if run.world > 1:
        gens = [None] * run.world
        torch.distributed.all_gather_object(gens, run.generator.get_state())
    if run.rank == 0:
        run.logger.flush()
        save_checkpoint(run.run_dir / CKPT_NAME, {
            "model": run.method.state_dict(), "optimizer": run.optimizer.state_dict(), "step": run.step,
            "generator": gens, "cpu_rng": torch.get_rng_state(), "config": run.cfg, "history": run.history,
            "data_info": data_info_of(run.dataset),
        })


def _loop(run: _Run) -> None:
    t = run.t
    after_step = run.method.after_optimizer_step
    progress = run.logger.progress(run.total_steps, initial=run.step, show=t["progress"])
    run.model.train()
    tick, seen = time.perf_counter(), 0
    while run.step < run.total_steps:
        epoch, start = divmod(run.step, run.steps_per_epoch)
        epoch_start = time.perf_counter()
        for images, labels in run.batches.device_batches(epoch, start, run.device, t["prefetch_batches"]):
            lr = lr_at(run.step, run.total_steps, run.steps_per_epoch, run.base_lr, t)
            loss, out = _train_step(run, images, labels, lr)
            run.step += 1
            after_step(run.step, run.total_steps)
            seen += images.shape[0] * run.world
            if run.step % t["log_every_steps"] == 0 or run.step == run.total_steps:
                loss_value = float(dist.all_reduce_mean(loss.float()))
                if not math.isfinite(loss_value):
                    raise UserError(f"the loss became {loss_value} at step {run.step} (epoch {epoch + 1}): lower "
                                    "train.lr, set train.grad_clip_norm, try train.precision=fp32, or check the data; "
                                    f"the last checkpoint in {run.run_dir} is intact")
                now = time.perf_counter()
                rate = seen / max(now - tick, 1e-9)
                tick, seen = now, 0
                extras = {k: float(v.detach().float()) for k, v in out.items()
                          if k != "loss" and torch.is_tensor(v) and v.numel() == 1}
                run.logger.step(step=run.step, epoch=epoch + run.step / run.steps_per_epoch - epoch, loss=loss_value,
                                lr=lr, images_per_s=rate, **extras)
                progress.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{rate:.0f}")
            progress.update(1)
            if t["ckpt_every_steps"] and run.step % t["ckpt_every_steps"] == 0 and run.step % run.steps_per_epoch:
                _checkpoint(run)
            if run.step >= run.total_steps:
                break
        if run.step % run.steps_per_epoch == 0 or run.step >= run.total_steps:
            paused = time.perf_counter()
            _end_of_epoch(run, paused - epoch_start, progress)
            # the checkpoint's and the monitor's time is not training throughput: the clock pauses (resetting
            # it here, as before, credited a log interval that spans the epoch's end with the steps before the
            # end as if they took no time: 485 images/s logged where the steps ran at 49)
            tick += time.perf_counter() - paused
    progress.close()


def _end_of_epoch(run: _Run, epoch_s: float, progress: Any) -> None:
    """Checkpoint first; then the monitor (rank 0), whose row is checkpointed again when it succeeds."""
    t = run.t
    _checkpoint(run)
    epoch_index = math.ceil(run.step / run.steps_per_epoch)
    if t["monitor"] == "none" or not (epoch_index % t["monitor_every_epochs"] == 0 or run.step >= run.total_steps):
        return
    row = _monitor(run, epoch_index, epoch_s)
    if row is not None:
        if run.rank == 0:
            shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
            base = run.history[0] if run.history[0]["epoch"] == 0 else None
            if base is not None and "knn_top1" in row and "knn_top1" in base:
                shown += f"  (untrained knn_top1={base['knn_top1']:.4g})"
            progress.write(shown)
        _checkpoint(run)  # the history row too


def _finish(run: _Run) -> None:
    if run.total_steps == 0 and run.ckpt_state is None:
        _checkpoint(run)  # train.epochs=0: the initial weights, so a random-init baseline evaluates like any run
    if run.rank == 0:
        run.logger.finish(run.history)
    dist.barrier()
