"""Image folders (messy ones included) and Parquet folders: decoding, splits, subsets, cache."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from unveil.data import Dataset, load_data
from unveil.data import folder as folder_mod
from unveil.data.decode import EMPTY, OK, UNREADABLE, decode_images
from unveil.errors import UserError


def _noise(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)


def _jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _messy_folder(root: Path) -> Path:
    """a: 12 good (RGB odd sizes, L, RGBA, CMYK, P); b: 6 good + truncated + zero-byte; c: 6 good + .txt;
    zz_empty: no files. 27 files, 3 skipped (1 empty, 1 not an image, 1 unreadable), 24 decode."""
    a, b, c = root / "a", root / "b", root / "c"
    for d in (a, b, c, root / "zz_empty"):
        d.mkdir(parents=True)
    for i in range(8):
        _noise((50 + i, 37), i).save(a / f"rgb{i}.jpg")
    _noise((30, 30), 10, "L").save(a / "gray.png")
    _noise((40, 41), 11, "RGBA").save(a / "alpha.png")
    _noise((45, 33), 12).convert("CMYK").save(a / "cmyk.jpg")
    _noise((33, 45), 13).quantize(16).save(a / "palette.png")
    for i in range(6):
        _noise((20 + 3 * i, 70), 20 + i).save(b / f"img{i}.png")
    whole = _jpeg_bytes(_noise((64, 64), 30))
    (b / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (b / "zero.jpg").write_bytes(b"")
    for i in range(6):
        _noise((64, 48), 40 + i).save(c / f"img{i}.bmp")
    (c / "notes.txt").write_text("not an image")
    return root


def _load(path: Path, cache: Path, **kw) -> Dataset:
    return load_data(str(path), cache_dir=str(cache), **kw)


def test_messy_folder_decodes_and_reports_one_line(tmp_path, capsys):
    root = _messy_folder(tmp_path / "messy")
    ds = _load(root, tmp_path / "cache", image_size=24)
    assert ds.classes == ["a", "b", "c"] and ds.num_classes == 3
    assert len(ds.train) + len(ds.test) == 24
    for split in (ds.train, ds.test):
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
        assert split.images.shape[1:] == (3, 24, 24)
        assert split.labels.dtype == torch.int64
    labels = torch.cat([ds.train.labels, ds.test.labels])
    assert torch.bincount(labels).tolist() == [12, 6, 6]
    assert ds.image_size == 24
    pixels = ds.train.images.double().div(255).transpose(0, 1).reshape(3, -1)
    assert np.allclose(ds.mean, pixels.mean(1).tolist()) and np.allclose(
        ds.std, pixels.std(1, correction=0).tolist()
    )
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "skipped" in ln]
    assert lines == [
        f"unveil: skipped 3 of 27 files (1 empty, 1 not an image, 1 unreadable) in {root.resolve()}; "
        "ignored class folders without images: zz_empty"
    ]


def test_default_folder_size_is_64_and_flat_folder_is_unlabelled(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(10):
        _noise((70, 90), i).save(flat / f"{i}.png")
    ds = _load(flat, tmp_path / "cache")
    assert ds.image_size == 64 and ds.train.images.shape[1:] == (3, 64, 64)
    assert ds.classes == [] and len(ds.train) == 8 and len(ds.test) == 2
    assert (ds.train.labels == -1).all() and (ds.test.labels == -1).all()


def test_decode_converts_modes_and_centre_crops(tmp_path):
    red_blue = np.zeros((50, 100, 3), dtype=np.uint8)
    red_blue[:, :50, 0] = 255
    red_blue[:, 50:, 2] = 255
    items = [
        _png_bytes(Image.fromarray(red_blue)),
        _png_bytes(Image.new("L", (9, 9), 77)),
        _png_bytes(Image.new("RGBA", (9, 9), (10, 20, 30, 128))),
        _png_bytes(Image.new("RGB", (9, 9), (200, 100, 50)).quantize(4)),
        _jpeg_bytes(Image.new("CMYK", (9, 9), (0, 0, 0, 0))),
        b"",
        b"definitely not an image",
        None,
    ]
    images, status = decode_images(items, 16, workers=1)
    assert status.tolist() == [OK, OK, OK, OK, OK, EMPTY, UNREADABLE, UNREADABLE]
    assert images.shape == (8, 3, 16, 16) and images.dtype == torch.uint8
    # 100x50 -> 32x16, centre 16 columns: left half red, right half blue
    assert images[0, :, 8, 2].tolist() == [255, 0, 0] and images[0, :, 8, 13].tolist() == [0, 0, 255]
    assert (images[1] == 77).all()
    assert (images[2, 0] == 10).all() and (images[2, 1] == 20).all() and (images[2, 2] == 30).all()
    assert images[3, :, 5, 5].tolist() == [200, 100, 50]
    assert (images[4].int() >= 250).all()  # CMYK (0, 0, 0, 0) is white
    assert (images[5:] == 0).all()


def test_parallel_decode_matches_serial():
    items = [_png_bytes(_noise((20 + i % 7, 30), i)) for i in range(40)] + [b"broken"] * 3
    serial = decode_images(items, 12, workers=1)
    parallel = decode_images(items, 12, workers=2, min_parallel=1)
    assert torch.equal(serial[0], parallel[0]) and np.array_equal(serial[1], parallel[1])
    assert (parallel[1] == UNREADABLE).sum() == 3


def test_split_is_stratified_saved_and_reused(tmp_path, capsys):
    root = _messy_folder(tmp_path / "messy")
    cache = tmp_path / "cache"
    first = _load(root, cache, image_size=16, test_fraction=0.25, split_seed=3)
    saved = list((cache / "splits").glob("*.json"))
    assert len(saved) == 1
    record = json.loads(saved[0].read_text())
    assert (
        len(record["train"]) + len(record["test"]) == 25
    )  # every candidate file; the truncated one drops later
    assert not set(record["train"]) & set(record["test"])
    assert all(re.fullmatch(r"[abc]/\w+\.\w+", n) for n in record["test"])
    assert sorted({n[0] for n in record["test"]}) == ["a", "b", "c"]  # every class is in the test split
    assert "saved to" in capsys.readouterr().err
    again = _load(root, cache, image_size=16, test_fraction=0.25, split_seed=3)
    assert torch.equal(first.test.images, again.test.images) and torch.equal(
        first.test.labels, again.test.labels
    )
    other = _load(root, tmp_path / "cache2", image_size=16, test_fraction=0.25, split_seed=4)
    assert len(other.test) + len(other.train) == 24
    assert not torch.equal(first.test.images, other.test.images)


def test_split_keeps_old_files_in_place_when_files_are_added(tmp_path):
    root = _messy_folder(tmp_path / "messy")
    cache = tmp_path / "cache"
    _load(root, cache, image_size=16)
    path = next((cache / "splits").glob("*.json"))
    before = json.loads(path.read_text())
    for i in range(5):
        _noise((30, 30), 100 + i).save(root / "c" / f"new{i}.png")
    _load(root, cache, image_size=16)
    after = json.loads(path.read_text())
    assert set(before["test"]) <= set(after["test"]) and set(before["train"]) <= set(after["train"])
    assert len(after["train"]) + len(after["test"]) == 30


def test_train_test_folders_are_used_as_given(tmp_path):
    for split, n in (("train", 6), ("val", 3)):
        for cls in ("x", "y"):
            (tmp_path / "d" / split / cls).mkdir(parents=True)
            for i in range(n):
                _noise((20, 20), i).save(tmp_path / "d" / split / cls / f"{i}.png")
    ds = _load(tmp_path / "d", tmp_path / "cache", image_size=8)
    assert ds.classes == ["x", "y"] and len(ds.train) == 12 and len(ds.test) == 6
    assert not (tmp_path / "cache" / "splits").exists()


def test_subset_is_stratified_and_deterministic(tmp_path):
    root = _messy_folder(tmp_path / "messy")
    cache = tmp_path / "cache"
    one = _load(root, cache, image_size=8, test_fraction=0.5, subset=6, test_subset=3)
    two = _load(root, cache, image_size=8, test_fraction=0.5, subset=6, test_subset=3)
    assert len(one.train) <= 6 and len(one.test) == 3
    assert torch.equal(one.train.images, two.train.images) and torch.equal(one.test.labels, two.test.labels)
    assert torch.bincount(one.test.labels, minlength=3).tolist() == [1, 1, 1]
    everything = _load(root, cache, image_size=8, test_fraction=0.5, subset=10_000)
    assert len(everything.train) >= 11  # larger than available: all of it
    for bad in (0, -3):
        with pytest.raises(UserError, match="data.subset must be a positive integer"):
            _load(root, cache, subset=bad)


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
    root = _messy_folder(tmp_path / "messy")
    cache = tmp_path / "cache"
    first = _load(root, cache, image_size=16)
    assert list(cache.glob("*.safetensors"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(folder_mod, "decode_images", no_decoding)
    second = _load(root, cache, image_size=16)
    assert torch.equal(first.train.images, second.train.images) and first.mean == second.mean
    with pytest.raises(AssertionError, match="decoded although cached"):
        _load(root, cache, image_size=20)  # another size is another entry


def test_unwritable_cache_is_skipped(tmp_path, capsys):
    root = _messy_folder(tmp_path / "messy")
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should be")
    ds = _load(root, blocker, image_size=8)
    assert len(ds.train) + len(ds.test) == 24
    assert "not caching decoded images" in capsys.readouterr().err


def test_missing_and_empty_folders_raise_user_errors(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(UserError, match=re.escape(str(missing))):
        _load(missing, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images in"):
        _load(tmp_path / "empty", tmp_path / "cache")
    (tmp_path / "junk" / "cls").mkdir(parents=True)
    (tmp_path / "junk" / "cls" / "a.txt").write_text("x")
    (tmp_path / "junk" / "cls" / "b.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="no images in"):
        _load(tmp_path / "junk", tmp_path / "cache")
    (tmp_path / "broken" / "cls").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "broken" / "cls" / f"{i}.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match="no readable"):
        _load(tmp_path / "broken", tmp_path / "cache")


def _write_parquet(path: Path, blobs: list[bytes], labels: list, names: list[str] | None) -> None:
    image = pa.array(
        [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(blobs)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    table = pa.table({"image": image, "label": pa.array(labels)})
    if names is not None:
        features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_parquet_folder_with_metadata_and_broken_bytes(tmp_path, capsys):
    blobs = [_png_bytes(_noise((12, 12), i)) for i in range(9)]
    _write_parquet(
        tmp_path / "pq" / "data" / "train-00000-of-00001.parquet",
        blobs[:6] + [b"\x89PNG broken"],
        [0, 1, 2, 0, 1, 2, 1],
        ["zero", "one", "two"],
    )
    _write_parquet(
        tmp_path / "pq" / "data" / "test-00000-of-00001.parquet", blobs[6:], [2, 1, 0], ["zero", "one", "two"]
    )
    ds = _load(tmp_path / "pq", tmp_path / "cache")
    assert ds.classes == ["zero", "one", "two"] and ds.image_size == 12  # square native size kept
    assert ds.train.labels.tolist() == [0, 1, 2, 0, 1, 2] and ds.test.labels.tolist() == [2, 1, 0]
    expected = torch.from_numpy(np.array(Image.open(io.BytesIO(blobs[4])))).permute(2, 0, 1)
    assert torch.equal(ds.train.images[4], expected)
    assert f"skipped 1 of 10 images (1 unreadable) in {tmp_path / 'pq'}" in capsys.readouterr().err


def test_parquet_train_only_with_string_labels(tmp_path):
    blobs = [_png_bytes(_noise((10, 14), i)) for i in range(12)]
    _write_parquet(tmp_path / "pq" / "train.parquet", blobs, ["dog", "cat", "emu"] * 4, None)
    ds = _load(tmp_path / "pq", tmp_path / "cache", test_fraction=0.25)
    assert ds.classes == ["cat", "dog", "emu"] and ds.image_size == 64  # not square: folder default
    assert len(ds.train) == 9 and sorted(ds.test.labels.tolist()) == [0, 1, 2]
    assert len(list((tmp_path / "cache" / "splits").glob("*.json"))) == 1
