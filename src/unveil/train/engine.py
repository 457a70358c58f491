"""The one thin training wrapper that serves every method.

It owns what methods should not: devices, precision, the optimizer and schedule, DDP, the data
order, checkpoints, logs, the progress bar and the per-epoch monitor. A method is any module
following the contract in ``unveil.methods``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import methods as method_registry
from ..build import build_method_for, data_info_of, load_dataset_for
from ..config import save_resolved
from ..errors import UserError, require
from . import dist
from .checkpoint import CKPT_NAME, CONFIG_NAME, load_checkpoint, save_checkpoint
from .loader import TensorBatches
from .logs import RunLogger
from .monitor import run_monitor
from .optim import build_optimizer, lr_at
from .precision import autocast, pick_device, pick_precision


def _channels_last_inputs(module: nn.Module) -> None:
    def hook(_m: nn.Module, args: tuple) -> tuple:
        x = args[0]
        if isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x, *args[1:])

    module.register_forward_pre_hook(hook)


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Load exported safetensors (or an unveil checkpoint) into a backbone, strictly."""
    from ..export import read_backbone_state

    state = read_backbone_state(path)
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    require(not missing and not unexpected,
            f"weights in {path} do not fit this backbone (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}): "
            "use the same backbone settings as the pretraining run")


def default_run_dir(cfg: dict[str, Any]) -> Path:
    data = Path(str(cfg["data"]["name"])).name or "data"
    return Path("runs") / f"{cfg['method']['name']}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(cfg: dict[str, Any], resume: str | Path | None = None) -> Path:
    """Train ``cfg`` (a resolved config); return the run directory."""
    t = cfg["train"]
    device = pick_device(t["device"])
    dist.init_from_env(device)
    rank, world = dist.rank(), dist.world_size()
    precision = pick_precision(t["precision"], device)

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
    cfg = {**cfg, "out": str(run_dir)}

    # Rank 0 decodes and caches the data first; the others then read the cache.
    if rank != 0:
        dist.barrier()
    dataset = load_dataset_for(cfg)
    if rank == 0:
        dist.barrier()
    require(len(dataset.train.images) >= t["batch_size"] * world,
            f"train.batch_size={t['batch_size']} x {world} process(es) is larger than the {len(dataset.train.images)} "
            "training images: lower train.batch_size or use more data")

    torch.manual_seed(t["seed"])
    method = build_method_for(cfg, dataset)
    if t["init_backbone"]:
        load_backbone_weights(method.backbone, t["init_backbone"])
    if t["freeze_backbone"]:
        method.backbone.requires_grad_(False)
    method.to(device)
    if t["channels_last"]:
        method.to(memory_format=torch.channels_last)
        _channels_last_inputs(method.backbone)
    model: nn.Module = method
    if world > 1:
        if device.type == "cuda":
            model = DistributedDataParallel(method, device_ids=[dist.local_rank()])
        else:
            model = DistributedDataParallel(method)
    step_fn = torch.compile(model) if t["compile"] else model

    batches = TensorBatches(dataset.train.images, dataset.train.labels, t["batch_size"], t["seed"], rank, world)
    steps_per_epoch = len(batches)
    total_steps = steps_per_epoch * t["epochs"]
    if t["max_steps"]:
        total_steps = min(total_steps, t["max_steps"])
    global_batch = t["batch_size"] * world
    base_lr = t["lr"] * global_batch / 256 if t["scale_lr"] else t["lr"]
    optimizer = build_optimizer(method, t, base_lr)
    generator = torch.Generator(device=device).manual_seed(t["seed"] * 1000 + rank)

    step, history = 0, []
    if ckpt_state is not None:
        method.load_state_dict(ckpt_state["model"])
        optimizer.load_state_dict(ckpt_state["optimizer"])
        step = int(ckpt_state["step"])
        history = list(ckpt_state.get("history", []))
        gens = ckpt_state["generator"]
        require(len(gens) == world, f"this run was trained with {len(gens)} process(es); resume it with the same number")
        generator.set_state(gens[rank])
        torch.set_rng_state(ckpt_state["cpu_rng"])

    logger = RunLogger(run_dir, enabled=rank == 0, resume_step=step if ckpt_state else None)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir / CONFIG_NAME)
        logger.info(f"run {run_dir}: {cfg['method']['name']} on {dataset.name} ({len(dataset.train.images)} images), "
                    f"{world} process(es) on {device.type}, {precision}, {steps_per_epoch} steps/epoch")

    def checkpoint() -> None:
        gens = [generator.get_state()]
        if world > 1:
            gens = [None] * world
            torch.distributed.all_gather_object(gens, generator.get_state())
        if rank == 0:
            save_checkpoint(run_dir / CKPT_NAME, {
                "model": method.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "generator": gens, "cpu_rng": torch.get_rng_state(), "config": cfg, "history": history,
                "data_info": data_info_of(dataset),
            })

    after_step = getattr(method, "after_optimizer_step", None)
    progress = logger.progress(total_steps, initial=step, show=t["progress"])
    model.train()
    tick, seen = time.perf_counter(), 0
    while step < total_steps:
        epoch, start = divmod(step, steps_per_epoch)
        for images, labels in batches.epoch(epoch, start):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            lr = lr_at(step, total_steps, steps_per_epoch, base_lr, t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device, precision):
                out = step_fn(images, labels, generator)
            loss = out["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if after_step is not None:
                after_step(step, total_steps)
            seen += images.shape[0] * world
            if step % t["log_every_steps"] == 0 or step == total_steps:
                loss_value = float(dist.all_reduce_mean(loss.detach().float()))
                if not math.isfinite(loss_value):
                    raise UserError(f"the loss became {loss_value} at step {step} (epoch {epoch + 1}): lower train.lr, "
                                    f"try train.precision=fp32, or check the data; the last checkpoint in {run_dir} is intact")
                now = time.perf_counter()
                rate = seen / max(now - tick, 1e-9)
                tick, seen = now, 0
                extras = {k: float(v.detach().float()) for k, v in out.items() if k != "loss" and torch.is_tensor(v) and v.numel() == 1}
                logger.step(step=step, epoch=epoch + step / steps_per_epoch - epoch, loss=loss_value, lr=lr,
                            images_per_s=rate, **extras)
                progress.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{rate:.0f}")
            progress.update(1)
            if t["ckpt_every_steps"] and step % t["ckpt_every_steps"] == 0 and step % steps_per_epoch:
                checkpoint()
            if step >= total_steps:
                break
        epoch_done = step % steps_per_epoch == 0 or step >= total_steps
        if epoch_done:
            epoch_index = math.ceil(step / steps_per_epoch)
            if t["monitor"] != "none" and (epoch_index % t["monitor_every_epochs"] == 0 or step >= total_steps):
                if rank == 0:
                    metrics = run_monitor(method, dataset, t, device, precision)
                    row = {"epoch": epoch_index, "step": step, **metrics}
                    history.append(row)
                    logger.epoch(row)
                    progress.write("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
                dist.barrier()
                model.train()
            checkpoint()
    progress.close()
    if total_steps == 0 and ckpt_state is None:
        checkpoint()  # train.epochs=0: the initial weights, so a random-init baseline evaluates like any run
    if rank == 0:
        logger.finish(history)
    dist.barrier()
    return run_dir
