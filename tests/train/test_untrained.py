"""One builder of the untrained encoder (unveil.runs.weights.build_untrained): what the engine starts from, and
what every baseline (kNN, linear, fine-tune, activation maps) is computed on, init_backbone included."""

from __future__ import annotations

import pytest
import torch

from unveil.config import resolve
from unveil.export import export_backbone
from unveil.runs.checkpoint import load_checkpoint
from unveil.runs.weights import build_untrained
from unveil.train import engine


def _cfg(folder, out, *extra):
    return resolve(None, [f"data.name={folder}", "data.image_size=16", f"out={out}", "backbone.cifar_stem=false",
                          "method.name=byol", "method.proj_hidden_dim=64", "method.pred_hidden_dim=64",
                          "method.proj_dim=32", "train.batch_size=16", "train.epochs=0", "train.monitor=none",
                          "train.precision=fp32", "train.progress=false", *extra])


@pytest.mark.slow
def test_the_untrained_encoder_is_what_the_engine_starts_from(tiny_folder, tmp_path, one_thread):
    run = engine.train(_cfg(tiny_folder, tmp_path / "zero"))
    state = load_checkpoint(run / "last.ckpt")
    built = build_untrained(state["config"], state["data_info"]).state_dict()
    assert built.keys() == state["model"].keys()
    assert all(torch.equal(built[k], v) for k, v in state["model"].items())


@pytest.mark.slow
def test_init_backbone_weights_are_the_untrained_encoder_and_its_target(tiny_folder, tmp_path, one_thread):
    first = engine.train(_cfg(tiny_folder, tmp_path / "a", "train.epochs=1", "train.seed=7"))
    state = load_checkpoint(first / "last.ckpt")
    path = tmp_path / "init.safetensors"
    trained = build_untrained(state["config"], state["data_info"])
    trained.load_state_dict(state["model"])
    export_backbone(trained.backbone, path, state["config"])
    cfg = _cfg(tiny_folder, tmp_path / "b", f"train.init_backbone={path}")
    fresh = build_untrained(cfg, state["data_info"])
    for k, v in trained.backbone.state_dict().items():
        assert torch.equal(fresh.backbone.state_dict()[k], v), k
        assert torch.equal(fresh.target_backbone.state_dict()[k], v), k  # the momentum target restarted from them
    run = engine.train(cfg)  # the engine builds the same
    started = load_checkpoint(run / "last.ckpt")["model"]
    assert torch.equal(started["backbone.conv1.weight"], trained.backbone.conv1.weight)
