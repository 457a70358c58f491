"""Engine seams of the two-branch methods: momentum copies follow train.init_backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unveil.config import resolve
from unveil.runs.checkpoint import load_checkpoint
from unveil.train import engine


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))


def _cfg(folder: Path, out: Path, method: list[str], **train) -> dict:
    over = [f"data.name={folder}", "data.image_size=16", f"out={out}", "backbone.cifar_stem=false",
            "train.batch_size=16", "train.monitor=none", "train.precision=fp32", "train.progress=false", *method]
    return resolve(None, over + [f"train.{k}={v}" for k, v in train.items()])


@pytest.mark.parametrize(("method", "online", "target"), [
    (["method.name=byol", "method.proj_hidden_dim=32", "method.pred_hidden_dim=32", "method.proj_dim=16"],
     "backbone.", "target_backbone."),
    (["method.name=moco", "method.queue_size=32", "method.bn_splits=2"], "backbone.", "key_backbone."),
])
@pytest.mark.slow
def test_momentum_copy_starts_from_init_backbone(tiny_folder, tmp_path, method, online, target):
    source = engine.train(_cfg(tiny_folder, tmp_path / "source", ["method.proj_hidden_dim=32", "method.proj_dim=16"],
                               epochs=1))
    run = engine.train(_cfg(tiny_folder, tmp_path / "init", method, epochs=0, init_backbone=str(source / "last.ckpt")))
    state = load_checkpoint(run / "last.ckpt")["model"]
    loaded = load_checkpoint(source / "last.ckpt")["model"]
    names = [k[len(online):] for k in state if k.startswith(online) and state[k].is_floating_point()]
    assert names
    for name in names:
        assert torch.equal(state[online + name], loaded["backbone." + name]), name  # the init weights were loaded
        assert torch.equal(state[target + name], state[online + name]), name  # and the momentum copy follows them
