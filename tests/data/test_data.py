"""Registered datasets (real files when present), lookup errors, and the tensor helpers of unveil.data."""

from __future__ import annotations

import io
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from unveil.data import dataset as dataset_mod
from unveil.data import load_data
from unveil.data.dataset import channel_stats, resize_uint8, stratified_pick
from unveil.data.load import resolve_source
from unveil.data.registry import DEBIAN_FASHION_MNIST
from unveil.errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
REPO = Path(__file__).resolve().parents[2]


def _shared_cifar10() -> Path:
    folder = Path(os.environ.get("UNVEIL_CIFAR10") or REPO / ".." / "shared" / "data" / "cifar10")
    if not (folder / "train.parquet").is_file() or not (folder / "test.parquet").is_file():
        pytest.skip(f"CIFAR-10 Parquet files not found in {folder} (set UNVEIL_CIFAR10)")
    return folder


def test_cifar10_from_shared_parquet(tmp_path, monkeypatch):
    monkeypatch.setenv("UNVEIL_CIFAR10", str(_shared_cifar10()))
    source = resolve_source("cifar10", tmp_path / "no_root", download=False)  # counts without decoding
    assert len(source.train) == 50_000 and len(source.test) == 10_000
    assert source.classes == CIFAR10_CLASSES
    assert np.bincount(source.train.labels).tolist() == [5000] * 10
    ds = load_data(
        "cifar10",
        root=str(tmp_path / "no_root"),
        subset=500,
        test_subset=200,
        download=False,
        cache_dir=str(tmp_path / "cache"),
    )
    assert ds.name == "cifar10" and ds.classes == CIFAR10_CLASSES and ds.image_size == 32
    assert ds.train.images.shape == (500, 3, 32, 32) and ds.test.images.shape == (200, 3, 32, 32)
    assert torch.bincount(ds.train.labels).tolist() == [50] * 10
    assert all(0.35 < m < 0.6 for m in ds.mean) and all(0.15 < s < 0.35 for s in ds.std)


@pytest.mark.slow
def test_cifar10_full_load_then_cached_load(tmp_path, monkeypatch):
    monkeypatch.setenv("UNVEIL_CIFAR10", str(_shared_cifar10()))
    kw = {"root": str(tmp_path / "no_root"), "download": False, "cache_dir": str(tmp_path / "cache")}
    first = load_data("cifar10", **kw)
    assert first.train.images.shape == (50_000, 3, 32, 32) and first.test.images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(first.test.labels).tolist() == [1000] * 10
    start = time.perf_counter()
    second = load_data("cifar10", **kw)
    assert time.perf_counter() - start < 5.0  # ~0.1 s on an idle machine
    assert torch.equal(first.test.images, second.test.images) and first.mean == second.mean


def test_fashion_mnist_from_debian_package(tmp_path):
    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            f"Fashion-MNIST IDX files not in {DEBIAN_FASHION_MNIST} (apt install dataset-fashion-mnist)"
        )
    ds = load_data(
        "fashion-mnist", root=str(tmp_path / "empty_root"), download=False, cache_dir=str(tmp_path / "c")
    )
    assert ds.train.images.shape == (60_000, 3, 28, 28) and ds.test.images.shape == (10_000, 3, 28, 28)
    assert ds.image_size == 28 and ds.num_classes == 10 and ds.classes[0] == "T-shirt/top"
    assert torch.equal(ds.train.images[:100, 0], ds.train.images[:100, 2])  # grayscale replicated
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10
    assert ds.mean[0] == pytest.approx(ds.mean[2]) and 0.2 < ds.mean[0] < 0.4  # known: 0.286


def _tiny_cifar_parquet(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
        rows.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
    meta = {"info": {"features": {"label": {"names": CIFAR10_CLASSES, "_type": "ClassLabel"}}}}
    table = pa.table({"image": pa.array(rows), "label": pa.array([i % 10 for i in range(n)], pa.int64())})
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table.replace_schema_metadata({"huggingface": json.dumps(meta)}),
        folder / f"{'train' if seed else 'test'}.parquet",
    )


def test_registered_parquet_under_root_is_resized_in_bulk(tmp_path, monkeypatch):
    monkeypatch.delenv("UNVEIL_CIFAR10", raising=False)
    _tiny_cifar_parquet(tmp_path / "root" / "cifar10", 20, seed=1)
    _tiny_cifar_parquet(tmp_path / "root" / "cifar10", 10, seed=0)
    native = load_data("cifar10", root=str(tmp_path / "root"), cache_dir=str(tmp_path / "cache"))
    small = load_data(
        "cifar10", root=str(tmp_path / "root"), image_size=16, cache_dir=str(tmp_path / "cache")
    )
    assert native.train.images.shape == (20, 3, 32, 32) and small.train.images.shape == (20, 3, 16, 16)
    assert small.image_size == 16 and small.classes == CIFAR10_CLASSES
    assert torch.equal(small.train.images, resize_uint8(native.train.images, 16))
    monkeypatch.setenv("UNVEIL_DATA", str(tmp_path / "root"))  # root from the environment
    assert (
        load_data("cifar10", cache_dir=str(tmp_path / "cache")).train.labels.tolist()
        == native.train.labels.tolist()
    )


def test_failed_download_is_one_fast_user_error(tmp_path, monkeypatch):
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.delenv("UNVEIL_CIFAR10", raising=False)
    root = tmp_path / "nowhere"
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        load_data("cifar10", root=str(root), cache_dir=str(tmp_path / "cache"))
    assert time.perf_counter() - start < 10 and calls  # the download was tried, through the patched urlopen
    message = str(err.value)
    assert "\n" not in message and "download failed (no network in this test)" in message
    assert f"{root / 'cifar10'}/train.parquet" in message and str(root / "cifar-10-batches-py") in message
    with pytest.raises(UserError, match=r"stl10: not found locally and download is off; .*stl10_binary/"):
        load_data("stl10", root=str(root), download=False, cache_dir=str(tmp_path / "cache"))


def test_out_of_memory_estimate_is_a_user_error(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (10, 10), (i, i, i)).save(folder / f"{i}.png")
    monkeypatch.setattr(dataset_mod, "available_memory", lambda: 10_000)
    with pytest.raises(UserError, match="data.image_size or data.subset"):
        load_data(str(folder), image_size=64, cache_dir=str(tmp_path / "cache"), storage="memory")


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="data.test_fraction"):
        load_data(str(tmp_path), test_fraction=1.0)
    with pytest.raises(UserError, match="data.image_size"):
        load_data(str(tmp_path), image_size=0)
    with pytest.raises(UserError, match="data.test_subset"):
        load_data(str(tmp_path), test_subset=-1)


def test_stratified_pick_is_proportional_and_seeded():
    labels = np.repeat(np.array([0, 1, 2, -1]), [50, 30, 15, 5])
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    picked = stratified_pick(labels, 20, seed=7)
    assert len(picked) == 20 and len(set(picked.tolist())) == 20 and (np.diff(picked) > 0).all()
    assert np.bincount(labels[picked] + 1).tolist() == [1, 10, 6, 3]
    assert np.array_equal(picked, stratified_pick(labels, 20, seed=7))
    assert not np.array_equal(picked, stratified_pick(labels, 20, seed=8))
    assert np.array_equal(stratified_pick(labels, 500, seed=1), np.arange(100))


def test_resize_and_stats_helpers():
    images = torch.zeros(5, 3, 12, 18, dtype=torch.uint8)
    images[:, 0] = 200
    images[:, 2, :, 9:] = 100
    out = resize_uint8(images, 8)
    assert out.shape == (5, 3, 8, 8) and out.dtype == torch.uint8
    assert (out[:, 0] == 200).all() and (out[:, 1] == 0).all()
    mean, std = channel_stats(images)
    assert np.allclose(mean, [200 / 255, 0.0, 50 / 255]) and np.allclose(std, [0.0, 0.0, 50 / 255])


def test_stl10_binary_layout(tmp_path):
    folder = tmp_path / "root" / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {
        "train": rng.integers(0, 256, (4, 3, 96, 96), dtype=np.uint8),
        "test": rng.integers(0, 256, (2, 3, 96, 96), dtype=np.uint8),
    }
    labels = {"train": np.array([1, 2, 10, 1], dtype=np.uint8), "test": np.array([3, 4], dtype=np.uint8)}
    for split in ("train", "test"):
        (folder / f"{split}_X.bin").write_bytes(images[split].transpose(0, 1, 3, 2).tobytes())  # column-major
        (folder / f"{split}_y.bin").write_bytes(labels[split].tobytes())
    ds = load_data("stl10", root=str(tmp_path / "root"), download=False, cache_dir=str(tmp_path / "cache"))
    assert ds.image_size == 96 and ds.classes[2] == "car" and ds.train.labels.tolist() == [0, 1, 9, 0]
    assert torch.equal(ds.test.images, torch.from_numpy(images["test"]))
