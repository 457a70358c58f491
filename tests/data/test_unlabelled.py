"""A folder of photos without class folders is first-class: it trains, checkpoints every epoch, and
shows what can be shown without labels; a failing monitor never costs a checkpoint."""

from __future__ import annotations

import pytest
import torch

from unveil.cli import main
from unveil.runs.checkpoint import load_checkpoint
from unveil.runs.logs import EPOCH_LOG, read_csv
from unveil.train import engine


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))


ARGS = ["data.image_size=16", "train.batch_size=16", "method.proj_hidden_dim=32", "method.proj_dim=16",
        "train.progress=false", "train.precision=fp32"]


@pytest.mark.slow
def test_flat_folder_trains_checkpoints_and_draws_neighbours(flat_folder, tmp_path, capsys, monkeypatch):
    saved_steps = []
    real_save = engine.save_checkpoint
    monkeypatch.setattr(engine, "save_checkpoint", lambda path, state: (saved_steps.append(state["step"]),
                                                                        real_save(path, state)))
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(flat_folder), "--method", "simclr", "--epochs", "2", "--out", str(out), *ARGS]) == 0
    err = capsys.readouterr().err
    assert "no labels" in err and "kNN monitor is skipped" in err and "Traceback" not in err
    steps_per_epoch = 77 // 16
    assert sorted(set(saved_steps)) == [steps_per_epoch, 2 * steps_per_epoch]  # every epoch
    assert load_checkpoint(out / "last.ckpt")["step"] == 2 * steps_per_epoch
    for figure in ("neighbours.png", "neighbours_untrained.png", "curves.png"):
        assert (out / figure).stat().st_size > 0, figure
    assert [r["epoch"] for r in read_csv(out / EPOCH_LOG)] == [1, 2]


@pytest.mark.slow
def test_flat_folder_autoencoder_also_draws_reconstructions(flat_folder, tmp_path):
    out = tmp_path / "ae"
    assert main(["pretrain", "--recipe", "overlay_cifar10", "--data", str(flat_folder), "--epochs", "1", "--out", str(out),
                 "data.image_size=16", "train.batch_size=16", "train.progress=false", "train.precision=fp32",
                 "method.arch=resnet18", "backbone.name=ae_resnet18"]) == 0
    assert (out / "recon.png").stat().st_size > 0 and (out / "neighbours.png").stat().st_size > 0


@pytest.mark.slow
def test_a_failing_monitor_loses_no_checkpoint(tiny_folder, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise IndexError("index -1 is out of bounds")

    monkeypatch.setattr(engine, "run_monitor", broken)
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(tiny_folder), "--epochs", "2", "--out", str(out), *ARGS]) == 0
    err = capsys.readouterr().err
    assert err.count("monitor failed (IndexError: index -1 is out of bounds)") == 3  # untrained, epochs 1 and 2
    assert load_checkpoint(out / "last.ckpt")["step"] == 2 * (77 // 16)


@pytest.mark.slow
def test_labelled_monitor_reports_its_share_and_the_untrained_baseline(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--data", str(tiny_folder), "--epochs", "1", "--out", str(out), *ARGS]) == 0
    untrained, row = load_checkpoint(out / "last.ckpt")["history"]
    assert row["monitor_s"] > 0 and 0 < row["monitor_share"] < 1 and "knn_top1" in row and row["epoch"] == 1
    assert untrained["epoch"] == 0 and untrained["step"] == 0 and "knn_top1" in untrained  # the baseline, measured first
    assert "untrained encoder: kNN top-1" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_baseline_is_the_untrained_run_of_the_same_recipe(tiny_folder, tmp_path, capsys):
    from unveil.config import resolve
    from unveil.protocols.knn import evaluate_knn

    def cfg(out, epochs):
        return resolve(None, [f"data.name={tiny_folder}", f"out={out}", f"train.epochs={epochs}", *ARGS,
                              "train.monitor=none", "train.batch_size=16"])

    trained = engine.train(cfg(tmp_path / "trained", 1))
    untrained = engine.train(cfg(tmp_path / "untrained", 0))
    result = evaluate_knn(trained, k=5, baseline=True)
    reference = evaluate_knn(untrained, k=5)
    assert result["untrained"] == {"top1": reference["top1"], "top5": reference["top5"]}
    from safetensors.torch import load_file

    rebuilt = load_file(str(next(trained.glob("features_untrained-*.safetensors"))))
    saved = load_file(str(next(untrained.glob("features_step0-*.safetensors"))))
    assert torch.equal(rebuilt["test_x"], saved["test_x"])  # the very weights a train.epochs=0 run saves
    assert main(["eval", "knn", str(trained), "--k", "5"]) == 0
    assert f"(untrained encoder, same data and protocol: {reference['top1']:.1f} %" in capsys.readouterr().out


def test_supervised_on_a_flat_folder_is_one_clear_line(flat_folder, tmp_path, capsys):
    code = main(["pretrain", "--data", str(flat_folder), "--method", "supervised", "--epochs", "1",
                 "--out", str(tmp_path / "sup"), "data.image_size=16", "train.batch_size=16", "train.progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and "trains on labels" in err and "Traceback" not in err
