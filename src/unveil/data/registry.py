"""Registered datasets (cifar10, cifar100, fashion-mnist, stl10): find them locally, else download.

Search order under the data root (``data.root``, else ``$UNVEIL_DATA``, else ``~/.cache/unveil/data``):

1. Parquet in the Hugging Face image layout: ``$UNVEIL_CIFAR10`` (cifar10 only), ``{root}/{name}/``;
2. fashion-mnist only: IDX files (``train-images-idx3-ubyte.gz`` ...) in ``{root}/fashion-mnist/``
   or ``/usr/share/datasets/fashion-mnist/`` (Debian package dataset-fashion-mnist);
3. the torchvision layout under the root (``cifar-10-batches-py/``, ``cifar-100-python/``,
   ``FashionMNIST/raw/``, ``stl10_binary/``);
4. a torchvision download into the root, when ``download`` is on and the network allows.

Otherwise one UserError lists these places.
"""

from __future__ import annotations

import gzip
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.datasets as tvd

from ..errors import UserError
from .dataset import to_rgb_nchw
from .parquet import parquet_source
from .source import Source

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class Registered:
    native_size: int
    classes: tuple[str, ...] | None  # fallback when the files do not name them
    torchvision_folder: str


REGISTERED = {
    "cifar10": Registered(
        32,
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        "cifar-10-batches-py",
    ),
    "cifar100": Registered(32, None, "cifar-100-python"),
    "fashion-mnist": Registered(28, tuple(tvd.FashionMNIST.classes), "FashionMNIST/raw"),
    "stl10": Registered(
        96,
        ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
        "stl10_binary",
    ),
}
_ALIASES = {
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "stl-10": "stl10",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
}


def canonical_name(name: str) -> str | None:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in REGISTERED else None


def data_root(root: str | Path | None) -> Path:
    if root is None:
        root = os.environ.get("UNVEIL_DATA") or Path.home() / ".cache" / "unveil" / "data"
    return Path(root).expanduser()


class ArrayPool:
    """Images already in memory (IDX, torchvision arrays): nothing to decode or cache."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray):
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def ids(self) -> list[str]:
        return [str(i) for i in range(len(self))]

    def take(self, index: np.ndarray) -> ArrayPool:
        return ArrayPool(self.images[torch.from_numpy(np.asarray(index, dtype=np.int64))], self.labels[index])

    def cache_key(self) -> None:
        return None

    def decode(self, size: int) -> tuple[torch.Tensor, np.ndarray]:
        return self.images, np.zeros(len(self), dtype=np.int8)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format), gzipped or not, as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise UserError(f"data: {path} is not an IDX file of unsigned bytes")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)


def _fashion_idx(folder: Path) -> Source | None:
    stems = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    paths = [_idx_file(folder, s) for s in stems]
    if not all(paths):
        return None
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)  # type: ignore[arg-type]
    return Source(
        name="fashion-mnist",
        where=str(folder),
        classes=list(REGISTERED["fashion-mnist"].classes or ()),
        train=ArrayPool(to_rgb_nchw(x_train.copy(), channels_last=False), y_train),
        test=ArrayPool(to_rgb_nchw(x_test.copy(), channels_last=False), y_test),
        native_size=28,
        default_size=28,
    )


def _stl10_binary(folder: Path) -> tuple[ArrayPool, ArrayPool] | None:
    """Labelled train/test of the STL-10 binary files (column-major 96x96 images, labels 1..10)."""

    def read(stem: str) -> ArrayPool:
        x = np.fromfile(folder / f"{stem}_X.bin", dtype=np.uint8).reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
        y = np.fromfile(folder / f"{stem}_y.bin", dtype=np.uint8).astype(np.int64) - 1
        return ArrayPool(torch.from_numpy(np.ascontiguousarray(x)), y)

    names = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
    return (read("train"), read("test")) if all((folder / n).is_file() for n in names) else None


def _torchvision(name: str, root: Path, download: bool) -> tuple[ArrayPool, ArrayPool, list[str]]:
    """The torchvision layout under root (RuntimeError when absent), downloading first if asked."""
    if name in ("cifar10", "cifar100"):
        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        train, test = cls(str(root), train=True, download=download), cls(str(root), train=False)
        pools = [
            ArrayPool(to_rgb_nchw(d.data, channels_last=True), np.asarray(d.targets)) for d in (train, test)
        ]
        return pools[0], pools[1], list(train.classes)
    if name == "fashion-mnist":
        train, test = (
            tvd.FashionMNIST(str(root), train=True, download=download),
            tvd.FashionMNIST(str(root), train=False),
        )
        pools = [
            ArrayPool(to_rgb_nchw(d.data, channels_last=False), d.targets.numpy()) for d in (train, test)
        ]
        return pools[0], pools[1], list(train.classes)
    if download:  # stl10: torchvision only downloads; reading it checks the md5 of 3 GB each time
        tvd.STL10(str(root), split="test", download=True)
    found = _stl10_binary(root / "stl10_binary")
    if found is None:
        raise RuntimeError("STL-10 binary files not found")
    return found[0], found[1], list(REGISTERED["stl10"].classes or ())


def _not_found(name: str, root: Path, why: str) -> UserError:
    places = [f"{root / name}/train.parquet + test.parquet (Hugging Face image layout)"]
    if name == "cifar10":
        places[0] += " or the folder named by $UNVEIL_CIFAR10"
    if name == "fashion-mnist":
        places.append(
            f"gzipped IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...) in "
            f"{root / 'fashion-mnist'} or {DEBIAN_FASHION_MNIST} (apt install dataset-fashion-mnist)"
        )
    places.append(f"the torchvision layout {root / REGISTERED[name].torchvision_folder}/")
    return UserError(
        f"data.name={name}: not found locally and {why}; put the files in one of: {'; '.join(places)} "
        "(choose the root with data.root or $UNVEIL_DATA)"
    )


def registered_source(name: str, root: Path, download: bool) -> Source:
    info = REGISTERED[name]
    folders = [root / name]
    if name == "cifar10" and os.environ.get("UNVEIL_CIFAR10"):
        folders.insert(0, Path(os.environ["UNVEIL_CIFAR10"]).expanduser())
    for folder in folders:
        if folder.is_dir() and (
            src := parquet_source(folder, name, list(info.classes or ()) or None, info.native_size)
        ):
            return src
    if name == "fashion-mnist":
        for folder in (root / "fashion-mnist", DEBIAN_FASHION_MNIST):
            if folder.is_dir() and (src := _fashion_idx(folder)):
                return src
    try:
        train, test, classes = _torchvision(name, root, download=False)
    except (RuntimeError, OSError):
        if not download:
            raise _not_found(name, root, "download is off") from None
        timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)  # a silent network fails in seconds, not minutes
        try:
            train, test, classes = _torchvision(name, root, download=True)
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            reason = str(getattr(exc, "reason", exc)).strip() or type(exc).__name__
            raise _not_found(name, root, f"the download failed ({reason})") from None
        finally:
            socket.setdefaulttimeout(timeout)
    return Source(
        name=name,
        where=str(root),
        classes=classes,
        train=train,
        test=test,
        native_size=info.native_size,
        default_size=info.native_size,
    )
