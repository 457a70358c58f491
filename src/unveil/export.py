"""Export a trained backbone as safetensors (no pickle), and load it back.

ResNet backbones are torchvision's ``ResNet`` with ``fc = Identity``, so the file loads into
``torchvision.models.resnet18()`` with ``strict=True`` after the same two edits (see
``torchvision_model``); ViTs are timm's ``VisionTransformer`` and load into ``timm.create_model`` the same way
(``timm_model``); ``metadata`` records the architecture, so any exported encoder (the
autoencoders' ResNet encoders and patch towers too) is rebuilt by ``load_backbone``.

A model trained on filtered inputs (MSCN's high-pass) must see them filtered at evaluation too:
its filter is written as JSON under the metadata key ``eval_filter`` (absent otherwise), and
``input_filter(path)`` rebuilds it as a function for normalised float batches::

    encoder, filt = load_backbone("backbone.safetensors"), input_filter("backbone.safetensors")
    features = encoder(filt(normalised_images))  # filt is the identity when nothing was recorded
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .errors import UserError, require
from .io import atomic_write, tensor_bytes
from .runs.weights import read_backbone_state, read_safetensors


def export_backbone(backbone: nn.Module, path: str | Path, cfg: dict[str, Any],
                    eval_filter: dict[str, Any] | None = None) -> dict[str, str]:
    """Write the weights and metadata; ``eval_filter`` is the method's input filter (``method.eval_filter``)."""
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    meta = {
        "format": "unveil-backbone/1",
        "backbone": json.dumps(cfg.get("backbone", {})),
        "method": json.dumps(cfg.get("method", {})),
        "num_features": str(getattr(backbone, "num_features", "")),
        "class": type(backbone).__name__,
    }
    if eval_filter is not None:
        from .methods._masking import check_input_filter

        meta["eval_filter"] = json.dumps(check_input_filter(eval_filter))
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta), needed=tensor_bytes(state))
    return meta


def read_metadata(path: str | Path) -> dict[str, str]:
    return read_safetensors(Path(path), tensors=False)[1]


def read_eval_filter(path: str | Path) -> dict[str, Any] | None:
    """The input filter recorded in an export (None when the model needs none)."""
    text = read_metadata(path).get("eval_filter")
    if not text:
        return None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError:
        raise UserError(f"{path}: the eval_filter metadata is not JSON ({text[:80]!r}): export it again") from None
    from .methods._masking import check_input_filter

    return check_input_filter(spec)


def input_filter(path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported model's evaluation input filter as a function of a normalised float batch
    (identity when none is recorded): apply it before the encoder, as pretraining did."""
    from .methods._masking import input_filter as make_filter

    return make_filter(read_eval_filter(path))


def torchvision_model(path: str | Path) -> nn.Module:
    """A plain torchvision ResNet (fc = Identity) holding the exported weights, loaded strictly."""
    import torchvision

    meta = read_metadata(path)
    bb = json.loads(meta.get("backbone", "{}"))
    arch = bb.get("name", "")
    require(arch in ("resnet18", "resnet34", "resnet50"),
            f"{path} holds a '{arch}' backbone, which is not a torchvision ResNet; load it with unveil.backbones")
    model = getattr(torchvision.models, arch)()
    model.fc = nn.Identity()
    if bb.get("cifar_stem"):
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.load_state_dict(read_backbone_state(path), strict=True)
    return model


def timm_model(path: str | Path) -> nn.Module:
    """A plain ``timm`` VisionTransformer (``num_classes=0``) holding an exported ViT, loaded strictly."""
    import timm

    from .backbones.vit import TIMM_NAMES

    meta = read_metadata(path)
    bb = json.loads(meta.get("backbone", "{}"))
    size = str(bb.get("name", "")).removeprefix("vit_")
    require(size in TIMM_NAMES, f"{path} holds a '{bb.get('name')}' backbone, not a ViT; see torchvision_model")
    require(isinstance(bb.get("img_size"), int) and isinstance(bb.get("patch_size"), int),
            f"{path} does not record the ViT's image and patch size: export it again with `unveil export RUN`")
    model = timm.create_model(TIMM_NAMES[size], pretrained=False, img_size=bb["img_size"],
                              patch_size=bb["patch_size"], depth=int(bb.get("depth", 12)), num_classes=0)
    model.load_state_dict(read_backbone_state(path), strict=True)
    return model.eval()


def load_backbone(path: str | Path) -> nn.Module:
    """Rebuild the exported encoder from its metadata (``build_backbone`` arguments) and load it strictly."""
    from .backbones import build_backbone

    state, meta = read_safetensors(Path(path))
    require(meta.get("format") == "unveil-backbone/1",
            f"{path} is not an unveil export (no 'unveil-backbone/1' metadata): export it with `unveil export RUN`")
    spec = dict(json.loads(meta.get("backbone") or "{}"))
    name = spec.pop("name", None)
    require(bool(name), f"{path} does not record its backbone name; export it again with `unveil export RUN`")
    try:
        model = build_backbone(name, **spec)
        model.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError) as exc:
        raise UserError(f"{path} does not match the '{name}' backbone of this unveil version "
                        f"({str(exc).splitlines()[0][:200]}): export it again with `unveil export RUN`") from None
    return model.eval()
