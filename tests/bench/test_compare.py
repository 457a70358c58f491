"""``unveil compare``: equal budgets (each method gets the steps its measured step time allows), the report,
resume after ``kill -9``, and the one-line errors. No timed assertions: the plan is checked with given step
times, and the report's wall-clock is only checked to be recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from unveil.bench import compare
from unveil.cli import main
from unveil.errors import UserError
from unveil.runs.logs import EPOCH_LOG, STEP_LOG


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("20m", 1200), ("1.5h", 5400), (" 2 m ", 120)])
def test_budgets_are_read_as_times(text, seconds):
    assert compare.parse_budget(text) == seconds


@pytest.mark.parametrize("bad", ["20", "0m", "-1m", "m", "20 minutes", "1d"])
def test_a_bad_budget_is_one_line(bad):
    with pytest.raises(UserError, match="--budget must be a time like 90s, 20m or 1.5h") as exc:
        compare.parse_budget(bad)
    assert "\n" not in str(exc.value)


def test_the_plan_gives_each_method_the_steps_its_step_time_allows(tmp_path, monkeypatch):
    measured = {"simclr": 0.5, "mae": 2.0, "overlay": 0.3}

    def fake_calibrate(c, scratch):  # what a timing run would have measured
        c.step_s = measured[c.name]
        return c

    monkeypatch.setattr(compare, "calibrate", fake_calibrate)
    dataset = SimpleNamespace(train=SimpleNamespace(images=torch.zeros(1000, 3, 8, 8)), image_size=32)
    request = {"data": "somewhere", "seed": 0}
    plan = compare.plan(list(measured), dataset, tmp_path, request, 600.0, None, [])
    assert {c.name: c.steps for c in plan} == {"simclr": 1200, "mae": 300, "overlay": 2000}  # 600 s / step time
    assert all(c.batch_size == 256 and c.steps_per_epoch == 3 for c in plan)  # auto batch for 1,000 images
    same = compare.plan(list(measured), dataset, tmp_path, request, 600.0, None, [])  # read back, not re-timed
    assert [c.steps for c in same] == [c.steps for c in plan]
    by_epochs = compare.plan(["simclr", "mae"], dataset, tmp_path / "epochs", request, None, 4, [])
    assert [c.steps for c in by_epochs] == [12, 12]  # the same epochs: the same steps
    with pytest.raises(UserError, match="holds a compare with other settings"):
        compare.plan(list(measured), dataset, tmp_path, {**request, "seed": 1}, 600.0, None, [])


def test_the_schedule_ends_at_the_planned_step_with_its_warm_up_inside():
    c = compare.Contender("byol", "byol_cifar10_solo", ["data.image_size=32"], step_s=1.0, steps=57, batch_size=256,
                          steps_per_epoch=19)
    cfg = compare.pretrain_config(c, Path("/tmp/nowhere"))
    assert cfg["train"]["max_steps"] == 57 and cfg["train"]["epochs"] == 3
    assert cfg["train"]["warmup_epochs"] == pytest.approx(0.3)  # byol_cifar10_solo's 10 epochs cut to a tenth of the run


@pytest.mark.parametrize("argv, words", [
    (["--methods", "simclr,sinclr", "--epochs", "1"], "unknown method(s) sinclr for compare"),
    (["--methods", "supervised", "--epochs", "1"], "supervised needs labels"),
    (["--epochs", "0"], "--epochs must be > 0"),
    (["--budget", "ten"], "--budget must be a time"),
])
def test_bad_options_are_one_line(flat_folder, tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))
    assert main(["compare", "--data", str(flat_folder), "--out", str(tmp_path / "c"), *argv]) != 0
    err = capsys.readouterr().err.strip()
    assert words in err.splitlines()[-1] and "Traceback" not in err and err.count("error") == 1, err


def test_an_empty_or_missing_folder_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    for data in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["compare", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "c")]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(data) in err, err


@pytest.mark.slow
@pytest.mark.dist
def test_a_killed_compare_continues_with_the_unfinished_method_and_writes_its_report(tiny_folder, tmp_path):
    out = tmp_path / "cmp"
    env = {**os.environ, "UNVEIL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "unveil.cli", "compare", "--data", str(tiny_folder), "--epochs", "3", "--methods",
           "simclr,overlay", "--out", str(out), "--linear-epochs", "1", "data.image_size=16"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not (out / "overlay" / "last.ckpt").is_file():  # the first method finished, the second has begun
        assert proc.poll() is None, "compare ended before it could be killed"
        assert time.monotonic() < deadline, "the second method never wrote a checkpoint"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "simclr" / "compare.json").is_file() and not (out / "overlay" / "compare.json").is_file()
    first = (out / "simclr" / "last.ckpt").stat().st_mtime_ns
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "simclr" / "last.ckpt").stat().st_mtime_ns == first  # kept, not trained again
    results = {n: json.loads((out / n / "compare.json").read_text()) for n in ("simclr", "overlay")}
    for r in results.values():
        assert r["plan"]["steps"] == 3 * r["plan"]["steps_per_epoch"] and r["pretrain_s"] > 0
        assert 0 <= r["knn"] <= 100 and 0 <= r["knn_untrained"] <= 100 and r["rankme"] >= 1
        assert r["linear_1pct_labels"] < r["linear_10pct_labels"] <= r["linear_labels"] if "linear_labels" in r \
            else r["linear_1pct_labels"] <= r["linear_10pct_labels"]
    for name, r in results.items():  # the monitor at every epoch (3 of them), the untrained encoder at 0 s
        curve, epochs = r["curve"], [e * r["plan"]["steps_per_epoch"] for e in range(4)]
        # the killed method may lose the point of the epoch it was killed in (checkpoint first, then the monitor)
        steps = [p["step"] for p in curve]
        assert steps == epochs if name == "simclr" else (set(steps) <= set(epochs) and steps[::len(steps) - 1] ==
                                                         epochs[::3]), (name, curve)
        assert curve[0]["train_s"] == 0 and all(a["train_s"] < b["train_s"] for a, b in zip(curve, curve[1:]))
        assert all(0 <= p["knn_top1"] <= 100 for p in curve)
    report = (out / "report.md").read_text()
    assert "| simclr |" in report and "| overlay |" in report and "raw pixels" in report
    assert (out / "scores.png").is_file() and (out / "score_vs_time.png").is_file()


def test_the_training_curve_reads_the_steps_own_clock(tmp_path):
    """Seconds of training at each monitored step: logged intervals' images over their images/s, summed,
    interpolated between logged steps; the monitor's time is not in it."""
    (tmp_path / STEP_LOG).write_text("step,loss,images_per_s\n10,1.0,100\n20,0.9,50\n25,0.8,50\n")
    (tmp_path / EPOCH_LOG).write_text("epoch,step,knn_top1,monitor_s\n0,0,20.0,9\n1,15,30.0,9\n2,25,35.0,9\n")
    # batch 10: steps 0-10 take 100 images / 100 per s = 1 s, 10-20 2 s, 20-25 1 s
    curve, monitor_s = compare.training_curve(tmp_path, batch_size=10)
    assert curve == [
        {"step": 0, "train_s": 0.0, "knn_top1": 20.0}, {"step": 15, "train_s": 2.0, "knn_top1": 30.0},
        {"step": 25, "train_s": 4.0, "knn_top1": 35.0}]
    assert monitor_s == 27.0  # the three monitor rows, left out of the method's pretraining time


@pytest.mark.slow
def test_an_unlabelled_folder_is_ranked_by_the_label_free_score_with_neighbours(flat_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))
    report = compare.run_compare(str(flat_folder), tmp_path / "c", epochs=1, methods=["simclr", "mae"],
                                 linear_epochs=0, overrides=["data.image_size=16"])
    text = report.read_text()
    assert "No labels: sorted by RankMe" in text and "kNN" not in text.split("|---")[0].splitlines()[-1]
    assert (tmp_path / "c" / "neighbours_simclr.png").is_file() and (tmp_path / "c" / "neighbours_mae.png").is_file()


def test_one_failing_method_is_recorded_and_the_others_still_report(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("UNVEIL_CACHE", str(tmp_path / "cache"))

    def fake_run(c, out, eval_data, labelled, linear_epochs):
        if c.name == "mae":
            raise UserError("mae: something the user can fix")
        return {"name": c.name, "recipe": c.recipe, "plan": {"steps": c.steps}, "images_seen": 64, "pretrain_s": 1.0,
                "knn": 70.0, "knn_untrained": 60.0, "test_images": 19, "rankme": 9.0, "rankme_untrained": 5.0}

    monkeypatch.setattr(compare, "run_contender", fake_run)
    with pytest.raises(UserError, match=r"1 of 2 methods failed \(mae\); the report has the others"):
        compare.run_compare(str(tiny_folder), tmp_path / "c", epochs=1, methods=["simclr", "mae"],
                            overrides=["data.image_size=16"])
    report = (tmp_path / "c" / "report.md").read_text()
    assert "| simclr |" in report and "Failed: mae: mae: something the user can fix" in report


@pytest.mark.parametrize("stem, expected", [
    ("auto", {"simclr": ["backbone.cifar_stem=auto"], "mae": ["backbone.cifar_stem=auto"],
              "overlay": ["backbone.cifar_stem=true"], "context-patch": ["backbone.cifar_stem=auto"]}),
    ("standard", {"simclr": ["backbone.cifar_stem=false"], "mae": ["backbone.cifar_stem=auto"],
                  "overlay": ["backbone.cifar_stem=false", "method.cifar=false"],
                  "context-patch": ["backbone.cifar_stem=auto"]}),
    ("cifar", {"simclr": ["backbone.cifar_stem=true"], "mae": ["backbone.cifar_stem=auto"],
               "overlay": ["backbone.cifar_stem=true", "method.cifar=true"], "context-patch": ["backbone.cifar_stem=auto"]}),
])
def test_stem_is_forced_only_where_a_contender_has_a_choice(stem, expected):
    """--stem reaches the ResNets and the overlay AE (encoder and decoder alike); a ViT has no stem and the
    context-patch tower is built for the CIFAR stem only, so both keep what auto gives them."""
    from unveil.build import backbone_config
    from unveil.config import resolve

    got = {name: compare.stem_overrides(compare.FAMILIES[name], 32, stem) for name in expected}
    assert got == expected
    for name, extra in got.items():  # every contender still resolves and builds its backbone section
        spec, _ = backbone_config(resolve(compare.FAMILIES[name], ["data.image_size=32", *extra])["backbone"], 32)
        if name in ("simclr", "overlay") and stem != "auto":
            assert spec["cifar_stem"] is (stem == "cifar")


def test_a_wrong_stem_is_one_line(tmp_path):
    with pytest.raises(UserError, match="--stem must be one of auto, cifar, standard"):  # before any data is read
        compare.run_compare("no-such-data", tmp_path / "c", epochs=1, stem="big")
