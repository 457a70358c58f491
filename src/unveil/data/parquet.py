"""Folders of Parquet files in the Hugging Face image layout (column ``image`` = {bytes, path}, ``label``).

Split files are recognised by name: ``train*.parquet`` / ``test*.parquet`` (``val*`` when there is
no test), at the top level, as shards one level down (``data/train-00000-of-00002.parquet``) or by
their folder (``plain_text/train/0000.parquet``). Top-level files with other names are all train
when no file is named train. Class names come from the schema metadata ``huggingface`` JSON
(``info.features.<label>.names``), else the sorted unique labels as strings.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image

from ..errors import UserError
from .cache import file_stats
from .decode import decode_images
from .source import Source

_IMAGE_COLUMNS = ("image", "img", "picture")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "target", "class", "category")


def _role(f: Path) -> str | None:
    for part in (f.stem.lower(), f.parent.name.lower()):
        for role in ("train", "test", "val"):
            if part.startswith(role):
                return role
    return None


def find_parquet(path: Path) -> dict[str, list[Path]] | None:
    """{'train': [...], 'test': [...]} (test may be missing) or None when path holds no Parquet files."""
    if path.is_file():
        return {"train": [path]} if path.suffix == ".parquet" else None
    top = sorted(path.glob("*.parquet"))
    deep = [f for f in sorted(path.glob("*/*.parquet")) + sorted(path.glob("*/*/*.parquet")) if _role(f)]
    files = top or deep
    if not files:
        return None
    groups: dict[str, list[Path]] = {"train": [], "test": [], "val": []}
    for f in files:
        role = _role(f)
        if role:
            groups[role].append(f)
    if not groups["train"]:
        return {"train": files}
    test = groups["test"] or groups["val"]
    return {"train": groups["train"], "test": test} if test else {"train": groups["train"]}


def _pick_column(schema: pa.Schema, preferred: tuple[str, ...], ok) -> str | None:
    names = [n for n in preferred if n in schema.names and ok(schema.field(n).type)]
    names += [f.name for f in schema if ok(f.type) and f.name not in names]
    return names[0] if names else None


def _is_image(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0)
    )


def _is_label(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)


def _hf_names(schema: pa.Schema, column: str) -> list[str] | None:
    try:
        meta = json.loads((schema.metadata or {})[b"huggingface"])
        names = meta.get("info", meta)["features"][column]["names"]
        return [str(n) for n in names] if names else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


class ParquetPool:
    """Rows of Parquet files: labels read eagerly, image bytes only for the rows that get decoded."""

    def __init__(self, base: Path, files: list[Path], column: str, file_idx, rows, labels):
        self.base, self.files, self.column = base, files, column
        self.file_idx, self.rows, self.labels = file_idx, rows, labels

    def __len__(self) -> int:
        return len(self.rows)

    def ids(self) -> list[str]:
        names = [f.relative_to(self.base).as_posix() if f != self.base else f.name for f in self.files]
        return [f"{names[i]}#{r}" for i, r in zip(self.file_idx.tolist(), self.rows.tolist())]

    def take(self, index: np.ndarray) -> ParquetPool:
        index = np.asarray(index, dtype=np.int64)
        return ParquetPool(
            self.base, self.files, self.column, self.file_idx[index], self.rows[index], self.labels[index]
        )

    def cache_key(self) -> list:
        rows = hashlib.sha256(self.file_idx.tobytes() + self.rows.tobytes()).hexdigest()
        return ["parquet", file_stats(self.files), self.column, rows]

    def blobs(self) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(self.rows)
        for fi in np.unique(self.file_idx).tolist():
            where = np.flatnonzero(self.file_idx == fi)
            col = pq.read_table(self.files[fi], columns=[self.column]).column(self.column)
            rows = self.rows[where]
            if not (len(rows) == len(col) and (rows == np.arange(len(col))).all()):  # else: all, in order
                col = col.take(pa.array(rows))
            col = col.combine_chunks()
            if pa.types.is_struct(col.type):
                col = col.field("bytes")
            for i, blob in zip(where.tolist(), col.to_pylist()):
                out[i] = blob
        return out

    def decode(self, size: int) -> tuple[torch.Tensor, np.ndarray]:
        return decode_images(self.blobs(), size)


def _read_labels(files: list[Path], column: str | None) -> tuple[pa.Array | None, np.ndarray, np.ndarray]:
    """(labels or None, file index, row index) over all rows of files."""
    chunks, file_idx, rows = [], [], []
    for i, f in enumerate(files):
        n = pq.ParquetFile(f).metadata.num_rows
        file_idx.append(np.full(n, i, dtype=np.int64))
        rows.append(np.arange(n, dtype=np.int64))
        if column is not None:
            chunks.append(pq.read_table(f, columns=[column]).column(column).combine_chunks())
    labels = pa.concat_arrays(chunks) if chunks else None
    return labels, np.concatenate(file_idx), np.concatenate(rows)


def _native_size(files: list[Path], column: str) -> int | None:
    """Side of the first image when it is square (decode at native size), else None."""
    for batch in pq.ParquetFile(files[0]).iter_batches(batch_size=1, columns=[column]):
        value = batch.column(0)[0].as_py()
        blob = value.get("bytes") if isinstance(value, dict) else value
        try:
            with Image.open(io.BytesIO(blob)) as img:
                return img.width if img.width == img.height else None
        except Exception:
            return None
    return None


def parquet_source(
    path: Path, name: str, known_classes: list[str] | None = None, native_size: int | None = None
) -> Source | None:
    """Parquet files under path as a Source, or None when there are none.

    ``native_size`` (registered datasets) means: decode at this size; else the first image decides.
    """
    groups = find_parquet(path)
    if groups is None:
        return None
    schema = pq.read_schema(groups["train"][0])
    image_col = _pick_column(schema, _IMAGE_COLUMNS, _is_image)
    if image_col is None:
        raise UserError(
            f"data.name: {groups['train'][0]} has no image column (a binary or {{bytes, path}} column)"
        )
    label_col = _pick_column(schema, _LABEL_COLUMNS, _is_label)
    read = {split: _read_labels(files, label_col) for split, files in groups.items()}
    values = [r[0] for r in read.values() if r[0] is not None]
    names = _hf_names(schema, label_col) if label_col else None
    if names is None and known_classes and values and pa.types.is_integer(values[0].type):
        names = known_classes
    lookup = None  # label values -> class index, when the classes are the sorted unique labels
    if label_col is None:
        classes: list[str] = []
    elif names is not None:
        classes = names
    else:
        uniques = sorted(pc.unique(pa.chunked_array(values)).drop_null().to_pylist())
        classes = [str(u) for u in uniques]
        lookup = pa.array(uniques, type=values[0].type)
    pools = {}
    base = path if path.is_dir() else path.parent
    for split, (raw, file_idx, rows) in read.items():
        if raw is None:
            labels = np.full(len(rows), -1, dtype=np.int64)
        elif lookup is not None:
            labels = pc.index_in(raw, value_set=lookup).fill_null(-1).to_numpy(zero_copy_only=False)
        else:
            labels = raw.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
            labels[(labels < 0) | (labels >= len(classes))] = -1
        pools[split] = ParquetPool(base, groups[split], image_col, file_idx, rows, labels.astype(np.int64))
    return Source(
        name=name,
        where=str(path),
        classes=classes,
        train=pools["train"],
        test=pools.get("test"),
        native_size=native_size,
        default_size=native_size or _native_size(groups["train"], image_col) or 64,
    )
