"""Methods: one file per method, registered by name.

The method contract (the only thing the engine knows about a method):

* ``backbone``: the module that is evaluated and exported.
* ``forward(images, labels, generator) -> dict[str, Tensor]`` is the training step:
  ``images`` is a uint8 batch ``(B, C, H, W)`` already on the training device, ``labels`` a long
  tensor, ``generator`` the run's seeded ``torch.Generator`` on that device. The method makes its
  own views and corruptions, and returns ``{"loss": scalar, ...anything worth logging}``.
  (Training step = ``forward`` so that DistributedDataParallel can wrap the method.)
* optional ``after_optimizer_step(step, total_steps)``: EMA targets, queues, momentum schedules.
* optional ``reset_targets()``: copy the online weights into the momentum copies; the engine calls
  it after loading ``train.init_backbone`` (so a target does not keep its random start).
* optional class attribute ``ddp_broadcast_buffers = False``: buffers that are per rank by design,
  or kept equal by the method itself (MoCo's gathered queue), are not overwritten by rank 0's.
* optional class attribute ``sync_batchnorm = True``: batch statistics are part of the loss (SimCLR,
  BYOL), so with ``train.sync_batchnorm: auto`` several CUDA processes share them (SyncBatchNorm).
* optional ``eval_filter``: plain data describing an input filter applied at evaluation (MSCN's
  high-pass); exports record it and the fine-tune applies it.
* optional ``branch_views(images, generator) -> dict[str, Tensor]``: what each branch sees, for
  ``unveil preview --recipe``.
* optional class attribute ``needs_labels = True``: the method trains on labels (supervised), so
  the engine refuses a folder without class folders with one line.
* optional class attribute ``default_recipe = "NAME"``: ``unveil pretrain --method X`` without
  ``--recipe`` starts from that recipe (a ViT method needs its backbone and optimizer, not the defaults).
* optional class attribute ``headline_protocol = "finetune"``: the evaluation the method is judged by
  (masked image modelling); ``unveil eval knn|linear`` then says so in one line.
* optional ``param_groups() -> list[dict]``: ``{"params": [...], "lr_scale": 1.0, "weight_decay": True}``
  per group (every trainable parameter in exactly one); the schedule multiplies each group's
  ``lr_scale``, ``weight_decay: False`` exempts a group (and LARS skips it). Without it, norms,
  biases, 1-d parameters and names a module lists in ``no_weight_decay()`` (timm's convention) get
  no weight decay (``unveil.param_groups.default_param_groups`` builds these for a submodule).
* ``embed(images) -> Tensor``: features for kNN / linear evaluation from a uint8 batch
  (the method applies its own deterministic evaluation transform).
* optional ``embed_head(images) -> Tensor``: the projection head's output under the same transform
  (``unveil eval knn --features head``: paper 5's kNN monitor reads MoCo's 128-d head).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..registry import Registry


@dataclass(frozen=True)
class DataInfo:
    """What a method needs to know about its data (sizes, classes, pixel statistics)."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)


METHODS: Registry[Callable[..., nn.Module]] = Registry("method", __name__)
ABOUT: dict[str, tuple[str, str]] = {}  # name -> (one-line summary, paper)


def register(name: str, summary: str = "", paper: str = "") -> Callable[[type], type]:
    """Class decorator: make a method available to recipes as ``method: name``.

    ``summary`` and ``paper`` feed ``methods_table`` (the README's table of what exists)."""

    def deco(cls: type) -> type:
        from .base import Method

        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"method '{name}': {cls!r} must subclass unveil.methods.base.Method (the method contract)")
        cls.registered_name = name
        METHODS.add(name, cls)
        doc_line = (cls.__doc__ or "").strip().split("\n")[0]
        ABOUT[name] = (summary or doc_line, paper)
        return cls

    return deco


def methods_table() -> str:
    """Markdown table of the registered methods (private ``_names`` left out), with their shipped recipes."""
    from ..config import available_recipes, load_recipe

    recipes: dict[str, list[str]] = {}
    for recipe in available_recipes():
        recipes.setdefault(str(load_recipe(recipe).get("method", {}).get("name", "simclr")), []).append(recipe)
    lines = ["| method | what it does | paper | shipped recipes |", "|---|---|---|---|"]
    for name in sorted(n for n in METHODS if not n.startswith("_")):
        summary, paper = ABOUT.get(name, ("", ""))
        shipped = ", ".join(f"`{r}`" for r in recipes.get(name, [])) or "-"
        cell = summary.replace("|", "\\|")  # a '|' in a summary would split the Markdown cell
        lines.append(f"| `{name}` | {cell} | {paper or '-'} | {shipped} |")
    return "\n".join(lines)


def available() -> list[str]:
    return sorted(METHODS)


def build_method(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a registered method; unknown names get one clear line."""
    from .settings import check_settings

    cls = METHODS.lookup(name)
    check_settings(name, cls, {k: v for k, v in kwargs.items() if k not in ("backbone", "data_info")})
    return cls(**kwargs)
