"""Build a 64 px ImageFolder of real photos from the CIFAR-10 Parquet (for bench_folder.py).

CIFAR-10 training images (32 px) are upsampled to 64 px (bicubic) and saved as JPEG (quality 90):
``--train-per-class`` images of each class to ``OUT/train/<class>/``, the next ``--val-per-class``
to ``OUT/val/<class>/`` (disjoint, first-come in the Parquet order), and every train image again,
without class folders, to ``OUT-flat/``. The defaults give 9,500 train / 3,900 val images.

    .venv/bin/python benchmarks/make_folder64.py --out /tmp/h3/cifar64
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_parquet = Path(os.environ.get("UNVEIL_CIFAR10", "/work/shared/data/cifar10")) / "train.parquet"
    p.add_argument("--parquet", default=str(default_parquet))
    p.add_argument("--out", required=True, help="output folder; OUT-flat is written beside it")
    p.add_argument("--train-per-class", type=int, default=950)
    p.add_argument("--val-per-class", type=int, default=390)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--quality", type=int, default=90)
    args = p.parse_args()
    out, flat = Path(args.out), Path(args.out + "-flat")
    for d in (out, flat):
        if d.exists():
            shutil.rmtree(d)
    table = pq.read_table(args.parquet, columns=["image", "label"])
    images, labels = table.column("image").to_pylist(), table.column("label").to_pylist()
    counts = {"train": [0] * len(CLASSES), "val": [0] * len(CLASSES)}
    quota = {"train": args.train_per_class, "val": args.val_per_class}
    flat.mkdir(parents=True)
    for i, (img, label) in enumerate(zip(images, labels)):
        split = next((s for s in ("train", "val") if counts[s][label] < quota[s]), None)
        if split is None:
            continue
        counts[split][label] += 1
        pil = Image.open(io.BytesIO(img["bytes"])).convert("RGB").resize((args.size, args.size), Image.BICUBIC)
        target = out / split / CLASSES[label]
        target.mkdir(parents=True, exist_ok=True)
        name = f"{CLASSES[label]}_{i:05d}.jpg"
        pil.save(target / name, quality=args.quality)
        if split == "train":
            shutil.copyfile(target / name, flat / name)
        if all(c >= quota[s] for s in quota for c in counts[s]):
            break
    info = {"source": args.parquet, "size": args.size, "jpeg_quality": args.quality,
            "upsampled_from": 32, "train": sum(counts["train"]), "val": sum(counts["val"]), "flat": str(flat)}
    Path(args.out + ".json").write_text(json.dumps(info, indent=2))  # beside the folder, not in it
    print(json.dumps(info))


if __name__ == "__main__":
    main()
