"""View settings: one dataclass, named presets from the papers, and the dataset -> preset default."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import require

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ViewConfig:
    """What one augmented view is made of; field names match the recipe keys. Validated on creation."""

    size: int  # output side S
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area fraction
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio w / h
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1  # kernel ~ 10 % of the output side, odd
    solarize_p: float = 0.0  # invert pixels >= 0.5 (on [0, 1]) with this probability per sample (BYOL view 2)
    normalize: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Recipes (YAML / omegaconf ListConfig) hand over lists; store tuples so configs compare and hash alike.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Sequence) and not isinstance(value, str):
                require(
                    all(isinstance(v, int | float) and not isinstance(v, bool) for v in value),
                    f"views.{f.name} must be a list of numbers, got {value!r}",
                )
                setattr(self, f.name, tuple(float(v) for v in value))
        self._validate()

    def _validate(self) -> None:
        def pair(name: str, n: int = 2) -> tuple[float, ...]:
            value = getattr(self, name)
            require(
                isinstance(value, tuple) and len(value) == n,
                f"views.{name} must be a list of {n} numbers, got {value!r}",
            )
            return value

        require(
            isinstance(self.size, int) and not isinstance(self.size, bool) and self.size > 0,
            f"views.size must be a positive integer, got {self.size!r}",
        )
        lo, hi = pair("crop_scale")
        require(0 < lo <= hi <= 1, f"views.crop_scale must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        lo, hi = pair("crop_ratio")
        require(0 < lo <= hi, f"views.crop_ratio must satisfy 0 < min <= max, got {(lo, hi)}")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            value = getattr(self, name)
            require(
                isinstance(value, int | float) and 0 <= value <= 1,
                f"views.{name} is a probability: use a number in [0, 1], got {value!r}",
            )
        jitter = pair("jitter", 4)
        require(min(jitter) >= 0, f"views.jitter strengths must be >= 0, got {jitter}")
        require(jitter[3] <= 0.5, f"views.jitter hue strength must be <= 0.5, got {jitter[3]}")
        lo, hi = pair("blur_sigma")
        require(0 < lo <= hi, f"views.blur_sigma must satisfy 0 < min <= max, got {(lo, hi)}")
        require(
            isinstance(self.blur_kernel_frac, int | float) and 0 < self.blur_kernel_frac <= 1,
            f"views.blur_kernel_frac must be in (0, 1], got {self.blur_kernel_frac!r}",
        )
        require(isinstance(self.normalize, bool), f"views.normalize must be true or false, got {self.normalize!r}")
        pair("mean", 3)
        require(min(pair("std", 3)) > 0, f"views.std must be positive, got {self.std}")


_NO_COLOUR: dict[str, Any] = {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0}


def _simclr(size: int) -> dict[str, Any]:
    # SimCLR ImageNet strengths; blur only where 10 % of the side is a meaningful kernel (STL-10 and up).
    return {"jitter": (0.8, 0.8, 0.8, 0.2), "blur_p": 0.5 if size >= 96 else 0.0}


def _byol(size: int) -> dict[str, Any]:
    # BYOL's view 1 (Grill et al. 2020, Table 6; lightly's BYOLView1Transform): jitter (0.4, 0.4, 0.2, 0.1)
    # p .8, gray .2, blur always, no solarization. Blur only where 10 % of the side is a meaningful kernel
    # (96 px and up): at 32 px solo-learn's and lightly's CIFAR BYOL turn it off.
    return {"jitter": (0.4, 0.4, 0.2, 0.1), "blur_p": 1.0 if size >= 96 else 0.0}


def _byol_view2(size: int) -> dict[str, Any]:
    # BYOL's view 2 differs from view 1 in blur (p .1) and solarization (p .2) (Table 6; BYOLView2Transform).
    return {"blur_p": 0.1 if size >= 96 else 0.0, "solarize_p": 0.2}


PRESETS: dict[str, Callable[[int], dict[str, Any]]] = {
    "simclr": _simclr,
    "cifar": lambda size: {"jitter": (0.4, 0.4, 0.4, 0.1)},  # SimCLR CIFAR / MoCo-CIFAR
    "byol": _byol,
    "crop-flip": lambda size: {"crop_scale": (0.2, 1.0), "normalize": False, **_NO_COLOUR},  # autoencoders
    "mae": lambda size: {"crop_scale": (0.2, 1.0), **_NO_COLOUR},
    "supervised": lambda size: dict(_NO_COLOUR),
    "none": lambda size: {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "flip_p": 0.0, **_NO_COLOUR},
}


# What a preset's SECOND view changes on top of its first (asymmetric presets only; the others make
# both views alike). Methods with two view pipelines (BYOL) read it through ``view_pair``.
SECOND_VIEW: dict[str, Callable[[int], dict[str, Any]]] = {
    "byol": _byol_view2,
}


def _check_keys(overrides: dict[str, Any], where: str) -> None:
    fields = [f.name for f in dataclasses.fields(ViewConfig) if f.name != "size"]
    for key in overrides:
        require(key in fields, f"unknown {where} option '{key}': choose from {', '.join(fields)}")


def view_preset(name: str, size: int, **overrides: Any) -> ViewConfig:
    """The named preset at output side ``size``, with recipe ``overrides`` on top."""
    require(name in PRESETS, f"unknown views preset '{name}': choose one of {', '.join(PRESETS)}")
    _check_keys(overrides, "views")
    return ViewConfig(size=size, **{**PRESETS[name](size), **overrides})


def view_pair(name: str, size: int, views: dict[str, Any] | None = None,
              views_2: dict[str, Any] | None = None, **common: Any) -> tuple[ViewConfig, ViewConfig]:
    """The two views of a two-pipeline method: view 1 = preset + ``views``; view 2 = preset + the
    preset's second-view changes (``SECOND_VIEW``) + ``views`` + ``views_2``. So ``views`` sets both
    views and ``views_2`` only the second (e.g. ``views_2: {solarize_p: 0.0}`` makes BYOL symmetric).
    ``common`` (mean, std) goes to both."""
    views, views_2 = dict(views or {}), dict(views_2 or {})
    _check_keys(views_2, "views_2")
    first = view_preset(name, size, **{**common, **views})
    second_extra = SECOND_VIEW[name](size) if name in SECOND_VIEW else {}
    second = view_preset(name, size, **{**second_extra, **common, **views, **views_2})
    return first, second


_SMALL_DATASETS = ("cifar", "fashion-mnist", "fashion_mnist", "fashionmnist", "mnist", "svhn")


def default_preset_for(dataset_name: str) -> str:
    """Small-image datasets (CIFAR-10/100, (Fashion-)MNIST, SVHN) -> "cifar"; everything else
    (STL-10, image folders, ImageNet-like parquet) -> "simclr"."""
    name = dataset_name.lower()
    return "cifar" if name.startswith(_SMALL_DATASETS) else "simclr"
