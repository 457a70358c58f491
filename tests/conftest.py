"""Shared fixtures: paths to real data, a tiny synthetic image folder, single-threaded torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# CI explores the same examples every run (a failure there reproduces); local runs keep exploring.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = Path(os.environ.get("UNVEIL_CIFAR10", REPO.parent / "shared" / "data" / "cifar10"))
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True, scope="session")
def _threads():
    """The cores shared among pytest-xdist's workers (scripts/test.sh runs one per core): one worker per core
    with one thread each beats one worker with two threads on these small models (docs/benchmarks.md)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = max(1, min(2, (os.cpu_count() or 1) // workers))
    torch.set_num_threads(threads)
    # child processes (the CLI, torchrun, scripts/gpu-check.sh) inherit the share: OpenMP's default of one
    # thread per core beside another worker oversubscribes the cores (`gpu-check.sh --compare --tiny` beside
    # one busy thread: 82-84 s with the default, 62-64 s with OMP_NUM_THREADS=1; 2-core AMD EPYC, 2026-12-03)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


@pytest.fixture
def one_thread():
    """One torch thread for tests of tiny tensors: 2 OpenMP threads on a loaded 2-core box cost ~7x
    (mixdet step test 9.3 s with 2 threads vs 1.4 s with 1, load average 6.8, 2-core AMD EPYC, 2026-11-30)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cifar10_dir() -> Path:
    if not (SHARED_CIFAR10 / "train.parquet").is_file():
        pytest.skip(f"CIFAR-10 Parquet files not found at {SHARED_CIFAR10} (set UNVEIL_CIFAR10)")
    return SHARED_CIFAR10


@pytest.fixture
def fashion_mnist() -> Path:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return FASHION_MNIST


def make_tiny_folder(tmp_path_factory) -> Path:
    """A 2-class ImageFolder of 96 16x16 images whose classes differ in colour (learnable)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny")
    g = torch.Generator().manual_seed(0)
    for cls, base in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        (root / cls).mkdir()
        for i in range(48):
            noise = torch.randint(-40, 40, (16, 16, 3), generator=g)
            arr = (torch.tensor(base) + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


@pytest.fixture
def tiny_folder(tmp_path_factory) -> Path:
    """A 2-class ImageFolder of 96 16x16 images whose classes differ in colour (learnable)."""
    return make_tiny_folder(tmp_path_factory)


@pytest.fixture
def flat_folder(tiny_folder, tmp_path) -> Path:
    """The tiny folder's 96 images in one flat folder: no class folders, so no labels."""
    import shutil

    flat = tmp_path / "flat"
    flat.mkdir()
    for f in sorted(tiny_folder.glob("*/*.png")):
        shutil.copy(f, flat / f"{f.parent.name}-{f.name}")
    return flat


# The longest tests of a CI run, longest first (`--durations` of a fresh-clone `bash .ci/run`, 2 workers, 2026-12-04:
# 181, 179, 75, 66, 64, 52, 46, 35 s): each worker must start on one of them, not find them queued last.
LONGEST = (
    "test_e2e_mim.py::test_mvmae_reconstructs_and_beats_the_untrained_vit_on_knn",
    "test_gpu_check.py::test_gpu_check_tiny_runs_every_part",
    "test_e2e_siamese.py::test_knn_beats_the_untrained_encoder[moco_unmix_cifar10]",
    "test_e2e_siamese.py::test_knn_beats_the_untrained_encoder[mscn_simclr_7_multimask]",
    "test_gpu_check.py::test_compare_tiny_runs_the_compare_part_and_writes_its_report",
    "test_gpu_check.py::test_reproduce_tiny_trains_each_method_and_prints_the_anchors",
    "test_bench.py::test_smoke_scale_of_shipped_suites_on_cifar10[overlay]",
    "test_multinode.py::test_two_nodes_with_local_or_shared_disk_caches",
)


def _long_rank(item) -> int | None:
    return next((i for i, name in enumerate(LONGEST) if item.nodeid.endswith(name)), None)


def pytest_collection_modifyitems(config, items):
    """Longest first, so that no worker ends the run alone on a long test.

    pytest-xdist's worksteal gives worker k the k-th contiguous share of this list and an idle worker steals the
    tail of another's queue, so the LONGEST tests are dealt round-robin to the heads of the shares; the rest
    follow in each share: end-to-end learning tests (minutes), then other slow ones, then the fast ones."""
    def rank(item) -> int:
        return 0 if "e2e/" in item.nodeid else 1 if item.get_closest_marker("slow") else 2

    longest = sorted((item for item in items if _long_rank(item) is not None), key=_long_rank)
    rest = sorted((item for item in items if _long_rank(item) is None), key=rank)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    shares, left = [], len(items)
    for k in range(workers):  # the share sizes worksteal hands out: the pending tests split evenly, in order
        shares.append(left // (workers - k))
        left -= shares[-1]
    ordered = []
    for k, size in enumerate(shares):
        heads = longest[k::workers]
        ordered += heads + rest[:size - len(heads)]
        rest = rest[size - len(heads):]
    items[:] = ordered + rest
