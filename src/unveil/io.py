"""Atomic file writes: a run never leaves a half-written file behind, and a full disk is one line."""

from __future__ import annotations

import errno
import gc
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UserError

# torch.save reports a failed write as RuntimeError("... unexpected pos ...") or "file write failed";
# safetensors as SafetensorError("... No space left on device (os error 28)"); the rest as OSError.
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_NO_SPACE_TEXTS = ("no space left", "os error 28", "disk quota", "file too large", "os error 27",
                   "unexpected pos", "file write failed")


class NoSpaceError(UserError):
    """A write ran out of room (disk full, quota, or file-size limit); the message says where and how much."""


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()  # read once: os.umask can only be read by setting it


def is_out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that failed for lack of room, whichever library raised it."""
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS:
        return True
    text = str(exc).lower()
    return any(t in text for t in _NO_SPACE_TEXTS)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors (and arrays) in a nested state: what a checkpoint or export will need on disk."""
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    nbytes = getattr(obj, "nbytes", None)
    return int(nbytes) if isinstance(nbytes, int) else 0


def _file_size_limit() -> int | None:
    """The process's file-size limit (``ulimit -f``) in bytes, or None where there is none."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def no_space_message(path: Path, exc: BaseException, needed: int | None = None, written: int = 0,
                     advice: str = "") -> str:
    """One line: the file, the folder's free space, the space needed, and what to do."""
    folder = path.parent
    try:
        free = human_bytes(shutil.disk_usage(folder).free)
    except OSError:
        free = "unknown"
    if needed:
        need = f"about {human_bytes(needed)}"
    else:
        need = f"more than the {human_bytes(written)} written before it failed" if written else "more room"
    limit = _file_size_limit()
    if (isinstance(exc, OSError) and exc.errno == errno.EFBIG) or (limit and max(written, needed or 0) >= limit):
        cause = f"the file-size limit (ulimit -f) stops files at {human_bytes(limit)}" if limit else (
            "the file-size limit (ulimit -f) stopped it")
    else:
        cause = f"{folder} has {free} free"
    return (f"no space to write {path}: it needs {need} and {cause}; free some space there or write to another "
            f"disk{advice}")


def atomic_write(path: str | Path, write: Callable[[str], None], needed: int | None = None,
                 advice: str = "") -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``; a crash leaves the old file intact.

    If the disk fills, the temporary file is removed and a `NoSpaceError` names the folder, its free space,
    ``needed`` bytes (when the caller knows them) and what to do (``advice`` is appended to the line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    failed: OSError | None = None
    written = 0
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except Exception as exc:
        if not is_out_of_space(exc):
            raise
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        failed = OSError(exc.errno if isinstance(exc, OSError) else errno.ENOSPC, str(exc))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if failed is not None:
        gc.collect()  # the writer (held by the finished traceback) closes its handle: the space is freed
        raise NoSpaceError(no_space_message(path, failed, needed, written, advice))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text), needed=len(text.encode()))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), needed=len(data))
