"""scripts/gpu-check.sh in its CPU mode (`--tiny`): (a) one engine step of every registered method,
(b) the SimCLR images/s table (unveil, lightly, floor), (r) the resume check, (s) disk cache vs RAM,
(c) each suite's untrained baselines and its first and last entries at `smoke` scale on real
CIFAR-10 images, through the same script a GPU machine runs; plus the part isolation (a part that
fails is recorded and the next one runs) and the one-line refusals."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from unveil.bench.spec import load_suite
from unveil.config import resolve
from unveil.methods import available

REPO = Path(__file__).resolve().parents[2]
SUITES = ("mixtures", "masked-siamese", "masked-modelling")  # the script's default (c)


def _shipped() -> list[str]:
    """The registered methods the script sees: other tests register private ones (``_tiny_regressor``) in
    this process only, and the script runs in its own."""
    return [m for m in available() if not m.startswith("_")]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _gpu_steps():
    spec = importlib.util.spec_from_file_location("gpu_steps", REPO / "scripts" / "gpu_steps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_part(cifar10_dir, tmp_path):
    out = tmp_path / "gpu-check"
    env = {**os.environ, "UNVEIL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), "--tiny", "--data", str(cifar10_dir),
                           "--out", str(out), "--budget-s", "1500"], env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = (out / "summary.md").read_text()
    assert "torch" in (out / "env.txt").read_text()
    # (a): a row per registered method, each ok with a finite loss from a timed step
    assert "## (a) one step of every method: passed" in summary
    steps = _rows(out / "steps" / "steps.csv")
    assert [r["method"] for r in steps] == _shipped()
    for r in steps:
        assert r["status"] == "ok" and r["finite"] == "True", r
        assert math.isfinite(float(r["loss"])) and float(r["step_s"]) > 0, r
    assert (out / "steps" / "steps.md").is_file() and (out / "steps" / "steps.json").is_file()
    # (b): every contender at both sizes, positive images/s, ratios against lightly and the floor
    assert "## (b) SimCLR ResNet-18 images/s: unveil, lightly, floor: passed" in summary
    bench = _rows(out / "bench" / "bench_gpu.csv")
    lightly = importlib.util.find_spec("lightly") is not None
    wanted = {"unveil full", "unveil views", "floor"} | ({"lightly", "lightly cl"} if lightly else set())
    for size in ("32", "64"):
        got = {r["contender"]: r for r in bench if r["size"] == size}
        assert set(got) == wanted, (size, sorted(got))
        for r in got.values():
            assert float(r["images_per_s"]) > 0 and float(r["vs_floor"]) > 0, r
    assert (out / "bench" / "bench_gpu.md").is_file() and (out / "bench" / "bench_gpu.json").is_file()
    # (r): the resumed run equals the uninterrupted one in every tensor (CPU kernels are deterministic)
    assert "## (r) --resume: interrupted + resumed vs uninterrupted: passed" in summary
    import json

    for row in json.loads((out / "resume" / "resume.json").read_text()):
        assert row["bit_identical"] == row["tensors"] > 0 and row["resumed_from_step"] == 3, row
    # (s): the same training from the disk cache and from RAM, both measured
    assert "## (s) training from the disk cache vs RAM: passed" in summary
    storage = json.loads((out / "storage" / "storage.json").read_text())
    assert [r["storage"] for r in storage["rows"]] == ["disk (building the cache)", "memory", "disk"]
    assert all(r["images_per_s"] > 0 for r in storage["rows"])
    # (c): the untrained baselines ran first, then (--tiny) each suite's first and last trained entries, done at
    # smoke scale and evaluated; the table lists every entry, the others as not run
    for suite in SUITES:
        assert f"## (c) suite {suite} at smoke scale: untrained baselines: passed" in summary
    for suite in SUITES:
        assert f"## (c) suite {suite} at smoke scale: passed" in summary
        rows = {r["entry"]: r for r in _rows(out / suite / "results.csv")}
        names = load_suite(suite).entry_names()
        assert list(rows) == names
        trained = [n for n in names if not n.startswith("untrained")]
        ran = {trained[0], trained[-1]} | {n for n in names if n.startswith("untrained")}
        for entry, row in rows.items():
            assert row["status"] == ("done" if entry in ran else "not run"), (suite, entry, row["status"])
            if entry in ran:
                assert row["scale"] == "smoke" and row["knn_top1"] != "", (suite, entry)  # evaluated: a number
    assert "total wall:" in summary


@pytest.mark.slow  # ~20 s: two subprocesses import torch and unveil
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA, where (a) and (b) must fail")
def test_a_failing_part_is_recorded_and_the_next_part_runs(cifar10_dir, tmp_path):
    out = tmp_path / "gc"
    env = {**os.environ, "UNVEIL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), "--device", "cuda", "--parts", "a,b",
                           "--data", str(cifar10_dir), "--out", str(out), "--budget-s", "300"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    summary = (out / "summary.md").read_text()
    assert "## (a) one step of every method: failed (exit 1)" in summary
    assert "## (b) SimCLR ResNet-18 images/s: unveil, lightly, floor: failed (exit 1)" in summary
    assert summary.count("last lines of") == 2
    steps = _rows(out / "steps" / "steps.csv")
    # one failure did not stop the other methods (nor the torch.compile rows a CUDA run adds)
    assert [r["method"] for r in steps if r["compile"] == "False"] == _shipped()
    assert all(r["status"] == "failed" and "no CUDA GPU is visible" in r["error"] for r in steps), steps


def test_every_method_gets_a_recipe_that_resolves_on_cifar10():
    gpu_steps = _gpu_steps()
    for method in _shipped():
        recipe = gpu_steps.recipe_for(method)
        cfg = resolve(recipe, [f"method.name={method}", "data.name=cifar10"])
        assert cfg["method"]["name"] == method, (method, recipe)
    assert gpu_steps.recipe_for("mae") == "mae_cifar10"  # the method's default_recipe wins


def test_gpu_check_refuses_bad_arguments_in_one_line(tmp_path):
    for args, needle in ((["--bogus"], "unknown argument '--bogus'"),
                         (["--data", str(tmp_path)], f"no train.parquet in --data {tmp_path}")):
        proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), *args], capture_output=True, text=True,
                              env={**os.environ, "UNVEIL_CIFAR10": ""}, timeout=60)
        assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def _tiny_part(flag: str, cifar10_dir: Path, out: Path) -> str:
    """Run ``gpu-check.sh FLAG --tiny`` on the CPU into ``out``; its summary.md (the run must succeed)."""
    env = {**os.environ, "UNVEIL_CACHE": str(out.parent / "cache")}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh"), flag, "--tiny", "--data", str(cifar10_dir),
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return (out / "summary.md").read_text()


@pytest.mark.slow  # ~90 s on 2 cores: three tiny pretraining runs in child processes, kNN at each epoch
def test_reproduce_tiny_trains_each_method_and_prints_the_anchors(cifar10_dir, tmp_path):
    """``--reproduce --tiny``: the GPU reproduction's path on the CPU (SimCLR, MoCo v2, BYOL through
    their shipped recipes, kNN against wall-clock, the published anchors beside them)."""
    out = tmp_path / "gpu-check"
    summary = _tiny_part("--reproduce", cifar10_dir, out)
    assert "## (p) published CIFAR-10 numbers: SimCLR, MoCo v2, BYOL at 100 epochs: passed" in summary
    assert "## (a)" not in summary and "## (c)" not in summary  # --reproduce runs its part alone
    points = _rows(out / "reproduce" / "reproduce.csv")
    for method in ("simclr", "mocov2", "byol"):
        mine = [p for p in points if p["method"] == method]
        # epoch 0 (the untrained encoder) and each of the 2 tiny epochs, with a wall-clock that grows
        assert [int(p["epoch"]) for p in mine] == [0, 1, 2], (method, mine)
        assert all(0.0 <= float(p["knn_top1"]) <= 100.0 for p in mine)
        walls = [float(p["wall_s"]) for p in mine]
        assert walls == sorted(walls) and walls[-1] > 0
        assert all(float(p["train_s"]) <= float(p["wall_s"]) for p in mine)
    table = (out / "reproduce" / "reproduce.md").read_text()
    for anchor in ("83.2", "84.8", "84.7", "86.8", "78.1"):
        assert anchor in table
    assert table.count("| finished |") == 3, table
    assert (out / "reproduce" / "time_to_accuracy.png").stat().st_size > 0


@pytest.mark.slow  # two tiny pretraining runs and their evaluations in a child process
def test_compare_tiny_runs_the_compare_part_and_writes_its_report(cifar10_dir, tmp_path):
    """``--compare --tiny``: the GPU compare's path on the CPU (issue #19 item 4): two families, one epoch."""
    out = tmp_path / "gpu-check"
    summary = _tiny_part("--compare", cifar10_dir, out)
    assert "## (m) every family on one budget: unveil compare: passed" in summary
    report = (out / "compare" / "report.md").read_text()
    assert "| simclr |" in report and "| mae |" in report and "raw pixels" in report
