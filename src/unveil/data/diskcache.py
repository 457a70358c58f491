"""Disk-backed uint8 image cache: a decoded split as one memory-mapped file, shared through the page cache.

Why: a dataset larger than RAM must still train, and the ranks of a node must not each hold a copy.
The split is decoded once into ``<label>-<size>px-<key>.u8`` under the cache root; every process
then maps it (``np.memmap``): the pages are file-backed, so they count as page cache, not as the
process's anonymous memory, and all ranks of a node share one copy. A rank touches only the rows
of its own batches.

File layout (little endian)::

    [0, 4096)           header: b"UNVEILU8", u32 length, JSON (format, n, size, file size,
                        trailer offset/length/crc32, skip counts)
    [4096, 4096+n*row)  pixels, uint8 (n, 3, size, size), good images only (row = 3*size*size)
    [trailer)           .npz: labels (n,), rows and crc32 of each chunk, channel histogram (3, 256)

Opening checks the magic, the format and the file size, the trailer's crc32, then the crc32 of
every chunk when the pixels are under ``FULL_VERIFY_BYTES`` (2 GiB), else of the first, the last
and 32 randomly drawn chunks (a different draw each open, so repeated runs cover the file). A
damaged file is rebuilt after ONE stderr line.

Building: chunks of about ``CHUNK_BYTES`` are decoded by forked worker processes (the decoder of
``unveil.data.decode``), which write their good rows straight into ``<file>.partial`` at the
chunk's slot and return status, crc32 and histogram. After each chunk the parent appends one line
to ``<file>.journal`` (append-only: a rewrite per chunk would cost O(chunks^2) on big data), so a
killed build restarts at the unfinished chunks (the reused ones are re-checked by crc first).
When every chunk is in, the good rows are moved down over the slots of skipped images (only
after the first skipped image; a clean dataset moves nothing), the trailer and header are
written, and the file is renamed to its final name: a final name always means a complete file.

Sharing: one builder per file. The builder holds an exclusive ``fcntl.lockf`` lock on
``<file>.lock``; other processes (ranks of a node, or nodes sharing the cache folder) block on it
and then open the finished file. On a shared file system this needs working POSIX locks (local
disks, NFSv4, Lustre mounted with ``-o flock``); otherwise give each node a local cache folder
(``data.cache_dir`` or ``$UNVEIL_CACHE``).
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import multiprocessing as mp
import os
import random
import shutil
import struct
import sys
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..io import atomic_write_text
from . import cache as cache_mod
from .dataset import Split, channel_histogram, resize_uint8
from .decode import OK, _decode_chunk, count_skipped, default_workers
from .folder import FilePool
from .parquet import ParquetPool

MAGIC = b"UNVEILU8"
FORMAT = 1
HEADER = 4096  # the pixels start on a page boundary
CHUNK_BYTES = 16 << 20  # decoded bytes per chunk: the unit of work, of resume and of checksums
FULL_VERIFY_BYTES = 2 << 30  # files with fewer pixel bytes are verified in full on every open
SAMPLED_CHUNKS = 32


class Damaged(Exception):
    """A cache file that exists but cannot be trusted; the message says why."""


@contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive POSIX lock on ``path`` (created if needed); yields False, unlocked, when the
    folder is not writable (then nothing will be written there either)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield False
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)  # released by close, or by the kernel if this process dies
        yield True
    finally:
        os.close(fd)


def cache_path(key_parts: Any, decode_size: int, size: int, label: str, root: Path) -> Path:
    """Where the entry of a pool (its ``cache_key()``) at ``size`` lives."""
    key = cache_mod.digest(cache_mod.VERSION, key_parts, decode_size, size)
    return root / f"{cache_mod.slug(label)}-{size}px-{key}.u8"


def chunk_rows(n: int, row_bytes: int) -> int:
    """Rows per chunk: about CHUNK_BYTES, but at least 8 chunks for parallelism on small data."""
    return max(16, min(CHUNK_BYTES // row_bytes, -(-n // 8)))


# ---------------------------------------------------------------------------------------------- open


def open_split(path: Path, full_verify_bytes: int = FULL_VERIFY_BYTES) -> tuple[Split, Counter[str], torch.Tensor]:
    """(split backed by the mapped file, skip counts, channel histogram); Damaged when untrustworthy,
    FileNotFoundError when absent."""
    with open(path, "rb") as f:
        head = f.read(HEADER)
        if len(head) < 12 or head[:8] != MAGIC:
            raise Damaged("not an unveil cache file (bad magic)")
        try:
            (length,) = struct.unpack("<I", head[8:12])
            meta = json.loads(head[12 : 12 + length])
            if meta.get("format") != FORMAT:
                raise Damaged(f"format {meta.get('format')}, expected {FORMAT}")
            actual = os.fstat(f.fileno()).st_size
            if actual != meta["file_size"]:
                raise Damaged(f"{actual} bytes, expected {meta['file_size']}")
            f.seek(meta["trailer_offset"])
            blob = f.read(meta["trailer_length"])
            if zlib.crc32(blob) != meta["trailer_crc"]:
                raise Damaged("trailer checksum mismatch")
            trailer = np.load(io.BytesIO(blob), allow_pickle=False)
            labels, rows, crcs, hist = (trailer[k] for k in ("labels", "rows", "crc", "hist"))
            n, size = int(meta["n"]), int(meta["size"])
        except (KeyError, ValueError, TypeError, struct.error, OSError) as exc:
            raise Damaged(f"unreadable header or trailer: {exc}") from None
    if len(labels) != n or int(rows.sum()) != n:
        raise Damaged("header and trailer disagree")
    if n == 0:
        images = torch.zeros((0, 3, size, size), dtype=torch.uint8)
    else:
        # mode "c" (private, copy-on-write): unwritten pages are the shared page cache; a stray
        # in-place write would copy one page into this process instead of crashing on a read-only map
        array = np.memmap(path, dtype=np.uint8, mode="c", offset=HEADER, shape=(n, 3, size, size))
        _verify(array.reshape(n, -1), rows, crcs, full_verify_bytes)
        images = torch.from_numpy(array)
    split = Split(images, torch.from_numpy(labels.astype(np.int64)))
    return split, Counter(meta.get("skipped", {})), torch.from_numpy(hist.astype(np.int64))


def _verify(flat: np.ndarray, rows: np.ndarray, crcs: np.ndarray, full_verify_bytes: int) -> None:
    starts = np.concatenate([[0], np.cumsum(rows)])
    chunks = range(len(rows))
    if flat.nbytes >= full_verify_bytes and len(rows) > SAMPLED_CHUNKS + 2:
        chunks = sorted({0, len(rows) - 1, *random.Random().sample(range(len(rows)), SAMPLED_CHUNKS)})
    for k in chunks:
        if zlib.crc32(flat[starts[k] : starts[k + 1]]) != int(crcs[k]):
            raise Damaged(f"checksum mismatch in chunk {k} of {len(rows)}")


# --------------------------------------------------------------------------------------------- build


def _pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def _write_rows(path: str, offset: int, rows: np.ndarray) -> int:
    """Write contiguous uint8 rows at offset; their crc32."""
    if not len(rows):
        return 0
    fd = os.open(path, os.O_WRONLY)
    try:
        _pwrite_all(fd, rows.data, offset)
    finally:
        os.close(fd)
    return zlib.crc32(rows)


def _histogram(nchw: np.ndarray) -> np.ndarray:
    return np.stack([np.bincount(nchw[:, c].reshape(-1), minlength=256) for c in range(3)]).astype(np.int64)


def _build_chunk(path: str, offset: int, items: list, decode_size: int, size: int) -> tuple:
    """Worker: decode one chunk. At the final size: write its good rows at offset, return
    (status, crc, hist, None); else return (status, None, None, pixels) for the parent to resize."""
    pixels, status = _decode_chunk(items, decode_size)
    good = np.ascontiguousarray(pixels[status == OK].transpose(0, 3, 1, 2))
    if decode_size != size:
        return status, None, None, good
    return status, _write_rows(path, offset, good), _histogram(good), None


def _read_journal(path: Path, head: dict) -> dict[int, dict]:
    """Finished chunks recorded by an earlier build of the same entry (a torn last line is ignored)."""
    done: dict[int, dict] = {}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return done
    if not lines or lines[0] != json.dumps(head, sort_keys=True):
        return done
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            done[int(entry["k"])] = entry
        except (ValueError, KeyError, TypeError):
            break
    return done


def _record(journal: int, entry: dict) -> None:
    """Append one finished chunk to the journal (one write: a kill leaves at most a torn last line)."""
    os.write(journal, (json.dumps(entry) + "\n").encode())


def _chunk_items(pool: Any, bounds: list[tuple[int, int]], todo: list[int], group: int) -> Iterator[tuple[int, list]]:
    """(k, items) for each chunk to build; Parquet bytes are read for ``group`` chunks at a time,
    so the compressed bytes in memory stay bounded."""
    for g in range(0, len(todo), group):
        ks = todo[g : g + group]
        lo, hi = bounds[ks[0]][0], bounds[ks[-1]][1]
        sub = pool.take(np.arange(lo, hi))
        if isinstance(sub, FilePool):
            items: list = [str(sub.root / f) for f in sub.files]
        elif isinstance(sub, ParquetPool):
            items = sub.blobs()
        else:
            raise TypeError(f"no disk cache for {type(pool).__name__}")
        for k in ks:
            a, b = bounds[k]
            yield k, items[a - lo : b - lo]


def build(path: Path, pool: Any, decode_size: int, size: int, workers: int | None = None,
          announce: bool = True) -> None:
    """Decode ``pool`` into the cache file ``path`` (resuming an interrupted build); the caller holds
    the lock. ``announce``: say so in one line (a rebuild has said it already)."""
    n, row = len(pool), 3 * size * size
    chunk = chunk_rows(n, row)
    bounds = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    partial = path.with_name(path.name + ".partial")
    journal_path = path.with_name(path.name + ".journal")
    head = {"format": FORMAT, "n": n, "chunk": chunk, "size": size, "decode_size": decode_size, "file": path.name}
    if partial.is_file() and partial.stat().st_size != HEADER + n * row:  # killed after _finish, before the rename?
        try:
            _quiet_open(partial)
            os.replace(partial, path)
            journal_path.unlink(missing_ok=True)
            return
        except Damaged:
            pass
    done = _read_journal(journal_path, head) if partial.is_file() else {}
    if partial.is_file() and partial.stat().st_size != HEADER + n * row:
        done = {}
    if done:
        flat = np.memmap(partial, dtype=np.uint8, mode="r", offset=HEADER, shape=(n, row)) if n else None
        for k in list(done):  # the journal says written; the crc says it is still there
            lo = bounds[k][0]
            if flat is None or zlib.crc32(flat[lo : lo + done[k]["good"]]) != done[k]["crc"]:
                del done[k]
        del flat
        lines = [json.dumps(head, sort_keys=True)] + [json.dumps(done[k]) for k in sorted(done)]
        atomic_write_text(journal_path, "\n".join(lines) + "\n")  # without a line torn by the kill
        print(f"unveil: resuming the cache build of {path}: {len(done)} of {len(bounds)} chunks reused",
              file=sys.stderr)
    else:
        with open(partial, "wb") as f:
            f.truncate(HEADER + n * row)  # sparse: blocks are allocated as chunks are written
        journal_path.write_text(json.dumps(head, sort_keys=True) + "\n")
    workers = default_workers() if workers is None else workers
    todo = [k for k in range(len(bounds)) if k not in done]
    gib = n * row / 1024**3
    if announce and not done:
        print(f"unveil: decoding {n} images at {size}x{size} ({gib:.2f} GiB) into the disk cache {path} "
              f"({len(todo)} chunks, {workers} worker(s))", file=sys.stderr)
    journal = os.open(journal_path, os.O_WRONLY | os.O_APPEND)
    try:
        for k, (status, crc, hist, pixels) in _run_chunks(str(partial), pool, bounds, todo, decode_size, size,
                                                          row, workers):
            if pixels is not None:  # registered datasets: decoded at native size, resized here
                resized = resize_uint8(torch.from_numpy(pixels), size).contiguous()
                crc = _write_rows(str(partial), HEADER + bounds[k][0] * row, resized.numpy())
                hist = channel_histogram(resized).numpy()
            bad = [[bounds[k][0] + int(i), int(status[i])] for i in np.flatnonzero(status != OK)]
            entry = {"k": k, "good": int((status == OK).sum()), "crc": int(crc), "bad": bad,
                     "hist": hist.reshape(-1).tolist()}
            _record(journal, entry)
            done[k] = entry
    finally:
        os.close(journal)
    _finish(path, partial, pool, bounds, done, row, size)
    journal_path.unlink(missing_ok=True)


def _run_chunks(partial: str, pool: Any, bounds: list, todo: list[int], decode_size: int, size: int, row: int,
                workers: int) -> Iterator[tuple[int, tuple]]:
    """(k, worker result) for each chunk in todo, in completion order; in this process or forked workers."""
    items = _chunk_items(pool, bounds, todo, group=max(4, 4 * workers))
    fork = "fork" in mp.get_all_start_methods() and sys.platform != "darwin"
    try:
        if workers <= 1 or len(todo) < 2 or not fork:
            for k, chunk_items in items:
                yield k, _build_chunk(partial, HEADER + bounds[k][0] * row, chunk_items, decode_size, size)
            return
        # fork: workers start in milliseconds and run only PIL, numpy and os.pwrite (no torch)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
            pending: dict = {}
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < 2 * workers:
                    try:
                        k, chunk_items = next(items)
                    except StopIteration:
                        exhausted = True
                        break
                    offset = HEADER + bounds[k][0] * row
                    pending[ex.submit(_build_chunk, partial, offset, chunk_items, decode_size, size)] = k
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield pending.pop(future), future.result()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"disk full while building the cache {partial}: free space, point data.cache_dir "
                            "(or UNVEIL_CACHE) to a larger disk, or lower data.image_size; a rerun resumes") from None
        raise


def _finish(path: Path, partial: Path, pool: Any, bounds: list, done: dict, row: int, size: int) -> None:
    """Move the good rows together, write trailer and header, rename to the final name."""
    status = np.zeros(len(pool), dtype=np.int8)
    hist = np.zeros((3, 256), dtype=np.int64)
    rows = np.array([done[k]["good"] for k in range(len(bounds))], dtype=np.int64)
    crcs = np.array([done[k]["crc"] for k in range(len(bounds))], dtype=np.uint32)
    for entry in done.values():
        for i, code in entry["bad"]:
            status[i] = code
        hist += np.asarray(entry["hist"], dtype=np.int64).reshape(3, 256)
    n = int(rows.sum())
    with open(partial, "r+b") as f:
        fd, at = f.fileno(), 0
        for k, (lo, _) in enumerate(bounds):  # destination never passes the source: in place is safe
            if at != lo and rows[k]:
                data = os.pread(fd, int(rows[k]) * row, HEADER + lo * row)
                _pwrite_all(fd, data, HEADER + at * row)
            at += int(rows[k])
        buf = io.BytesIO()
        np.savez(buf, labels=pool.labels[status == OK].astype(np.int64), rows=rows, crc=crcs, hist=hist)
        trailer, offset = buf.getvalue(), HEADER + n * row
        _pwrite_all(fd, trailer, offset)
        f.truncate(offset + len(trailer))
        meta = {"format": FORMAT, "n": n, "size": size, "file_size": offset + len(trailer),
                "trailer_offset": offset, "trailer_length": len(trailer), "trailer_crc": zlib.crc32(trailer),
                "skipped": dict(count_skipped(status))}
        blob = json.dumps(meta).encode()
        _pwrite_all(fd, MAGIC + struct.pack("<I", len(blob)) + blob, 0)
        os.fsync(fd)
    os.replace(partial, path)


# ------------------------------------------------------------------------------------------ top level


def disk_split(pool: Any, path: Path, decode_size: int, size: int,
               workers: int | None = None) -> tuple[Split, Counter[str], torch.Tensor]:
    """The split of ``pool`` at ``size`` from the cache file ``path`` (see ``cache_path``), building
    (or rebuilding) it first if needed; safe to call from many processes at once: one builds, the
    others wait and read."""
    try:
        return _quiet_open(path)
    except (FileNotFoundError, Damaged):
        pass
    with file_lock(path.with_name(path.name + ".lock")) as locked:
        if not locked:
            raise UserError(f"data.storage=disk needs a writable cache folder, and {path.parent} is not: "
                            "set data.cache_dir (or UNVEIL_CACHE) to one")
        try:
            return _quiet_open(path)  # built by another process while this one waited
        except FileNotFoundError:
            pass
        except Damaged as exc:
            print(f"unveil: cache file {path} is damaged ({exc}); rebuilding it", file=sys.stderr)
            path.unlink(missing_ok=True)
            build(path, pool, decode_size, size, workers, announce=False)
            return _quiet_open(path)
        build(path, pool, decode_size, size, workers)
        return _quiet_open(path)


def _quiet_open(path: Path) -> tuple[Split, Counter[str], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_split(path)


def free_bytes(root: Path) -> int | None:
    """Free bytes on the file system that holds root (or its nearest existing parent)."""
    here = root
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None
