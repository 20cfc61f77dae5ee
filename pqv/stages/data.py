"""Data stage: the data set, read once and checked for meaning, as a manifest every stage trusts.

`pqv data` walks the configured tree once, decodes every image it selects on the job's cores, and
writes a manifest: the class list, per split the files with their class index, per-class counts,
the image modes seen, the value range of high-bit-depth images and a fingerprint of the bytes it
read. The workflow writes one manifest per split (`--split`: results/data/train.json, eval.json),
so that a job depends on the split it reads; without `--split` both splits go in one file. Every
later stage builds its data set from a manifest (pqv.common.datasets) and never lists the tree again.

What the manifests guarantee, for ImageFolder trees as people keep them:
- one class index, from the training split, for every split; names starting with `.` (a
  `.ipynb_checkpoints/` folder, macOS `._x.jpg` files) are never classes or images;
- a class of the evaluation split that training lacks is an error naming it; a training class
  with no evaluation images is a warning (in the log and in the manifest): it cannot be scored;
- 16-bit and float images (PIL modes I;16, I, F: microscopy, medical, scans) are scaled linearly
  from the training split's value range to 8 bits, the same range for every image (so classes
  that differ in level stay apart), instead of PIL's convert("RGB"), which clips them to white;
- every selected image decodes, and no class is empty: otherwise one error naming them.

What a changed image reruns: pqv.plan.manifest (`stamp`), which also reads the manifests.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import logging
import os
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..plan import resources
from ..plan.errors import PQVError
from ..plan.manifest import (
    FORMAT,
    HIGH_DEPTH,
    SHOWN,
    SPEC_KEYS,
    SPLITS,
    _enter,
    check_classes,
    class_folders,
    images_in,
    read,
    split_folder,
)

log = logging.getLogger(__name__)

ORIENTATION = 0x0112  # the EXIF tag phones write instead of turning the pixels
# Images above this many pixels are named in one warning per data set: every stage decodes them at
# full size (a 144-megapixel PNG holds ~0.6 GB while it is decoded), and the jobs that read images
# ask for memory for the largest one in each of their loader processes (pqv.plan.resources.Work).
LARGE_PIXELS = 50_000_000


# ---- the data job: one walk, every selected image decoded ------------------------------------


def _subset(n: int, limit: int | None, seed: int) -> list[int]:
    """A fixed random subset of `n` items (all of them without a limit), in order."""
    if not limit or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def _digits(spec: dict, wanted: tuple[str, ...] = SPLITS) -> dict:
    """scikit-learn's 1,797 handwritten 8x8 digits, split 80/20 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    seed = spec.get("split_seed") or 0
    idx = dict(zip(SPLITS, train_test_split(list(range(len(y))), test_size=0.2, stratify=y, random_state=seed)))
    classes = [str(c) for c in range(10)]
    splits = {}
    for split in wanted:
        chosen = [idx[split][i] for i in _subset(len(idx[split]), spec.get(f"max_{split}"), seed)]
        splits[split] = {"items": [[int(y[i]), int(i)] for i in chosen]}
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    hashes = {split: [digest] * len(splits[split]["items"]) for split in wanted}
    return _finish(spec, classes, splits, {"8x8 gray, 17 levels": len(y)}, None, hashes, warnings=[])


def _listing(spec: dict, splits: tuple[str, ...], classes: list[str] | None) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
    """The tree, listed once: the class list (the training split's, or `classes` when the training
    split is not among `splits`) and each split's images per class."""
    found = {}
    for split in splits:
        folder = split_folder(spec, split)
        if not folder.is_dir():
            raise PQVError(f"data folder {folder} does not exist", f"check dataset.root and dataset.{split}_dir in the config")
        names = class_folders(folder)
        if not names:
            raise PQVError(f"data folder {folder} has no class folders", "an ImageFolder split holds one folder of images per class")
        split_root = _enter(folder, ())
        found[split] = {c: images_in(folder / c, split_root) for c in names}
    classes = list(found["train"]) if "train" in found else classes
    if "eval" in found:
        check_classes(spec, classes, found["eval"])
    empty = [f"{split}/{c}" for split in splits for c, files in found[split].items() if not files]
    if empty:
        raise PQVError(
            f"{len(empty)} empty class folder(s) in {spec['root']}: {', '.join(empty[:SHOWN])}",
            "add images to the empty classes or remove those folders",
        )
    return classes, found


def inspect(path: str | os.PathLike) -> dict:
    """Read and decode one image: its bytes' hash, PIL mode and, for high-depth modes, the value
    range; `problem` says why it cannot be used."""
    import numpy as np
    from PIL import Image

    try:
        raw = Path(path).read_bytes()
        with Image.open(_io.BytesIO(raw)) as im:
            mode, pixels = im.mode, im.width * im.height
            turned = im.getexif().get(ORIENTATION, 1) not in (1, None)  # read turned, as a viewer shows it
            im.draft(mode, (max(1, im.width // 8), max(1, im.height // 8)))  # JPEG: decode at 1/8 scale
            im.load()
            low = high = None
            if mode in HIGH_DEPTH:
                values = np.asarray(im)
                if not np.isfinite(values).all():
                    return {"problem": "ValueError: non-finite pixel values"}
                low, high = float(values.min()), float(values.max())
        return {
            "sha256": hashlib.sha256(raw).hexdigest(),
            "mode": mode,
            "low": low,
            "high": high,
            "turned": turned,
            "pixels": pixels,
            "problem": None,
        }
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        text = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", f"{type(e).__name__}: {e}")  # PIL names its buffer
        return {"problem": " ".join(text.split())}


def _imagefolder(spec: dict, threads: int, splits: tuple[str, ...], train: dict | None) -> dict:
    from ..common.progress import progress

    classes, found = _listing(spec, splits, train["classes"] if train else None)
    index = {c: i for i, c in enumerate(classes)}
    seed = spec.get("split_seed") or 0
    chosen, paths = {}, {}
    for split in splits:
        folder = split_folder(spec, split).resolve()
        items = [[index[c], f"{c}/{rel}"] for c in found[split] for rel in found[split][c]]
        items = [items[i] for i in _subset(len(items), spec.get(f"max_{split}"), seed)]
        chosen[split] = {"folder": str(folder), "items": items}
        paths[split] = [folder / rel for _, rel in items]
    every = [p for split in splits for p in paths[split]]
    log.info("decoding %d images on %d thread(s)", len(every), threads)
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes and hashlib hashes without the GIL
        facts = list(progress(pool.map(inspect, every, chunksize=64), total=len(every), desc="decode", unit="image"))
    bad = [(p, f["problem"]) for p, f in zip(every, facts) if f["problem"]]
    if bad:
        for p, why in bad:
            log.error("unreadable: %s (%s)", p, why)
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:SHOWN])
        more = f"; all {len(bad)} are listed in the data job's log" if len(bad) > SHOWN else ""
        raise PQVError(f"{len(bad)} unreadable image(s): {shown}{more}", "replace or delete the unreadable files")
    modes: dict[str, int] = {}
    for f in facts:
        modes[f["mode"]] = modes.get(f["mode"], 0) + 1
    turned = sum(bool(f.get("turned")) for f in facts)
    if turned:
        log.info(
            "%d image(s) carry an EXIF orientation: every stage reads them turned, as a photo viewer shows them (docs/data.md)", turned
        )
    # High-depth images are scaled by the training split's value range (like any statistic a model
    # is fitted with); an evaluation split on its own takes it from the training split's manifest.
    if "train" in splits:
        deep = [f for f in facts[: len(paths["train"])] if f["low"] is not None]
        value_range = [min(f["low"] for f in deep), max(f["high"] for f in deep)] if deep else None
    else:
        value_range = (train or {}).get("value_range")
    hashes, start = {}, 0
    for split in splits:
        hashes[split] = [f["sha256"] for f in facts[start : start + len(paths[split])]]
        start += len(paths[split])
    warnings = []
    large = [(p, f["pixels"]) for p, f in zip(every, facts) if f["pixels"] > LARGE_PIXELS]
    if large:
        named = ", ".join(f"{p} ({n / 1e6:.0f} MP)" for p, n in large[:SHOWN]) + (" ..." if len(large) > SHOWN else "")
        warnings.append(
            f"{len(large)} image(s) larger than {LARGE_PIXELS / 1e6:.0f} megapixels: {named}; each is "
            f"decoded at full size by every stage that reads it (about "
            f"{resources.decode_mb(max(n for _, n in large)):,.0f} MB for the largest, in every loader process, "
            f"which the jobs' memory requests include): downscale them once to save memory and time"
        )
    if "eval" in splits:
        missing = [c for c in classes if not found["eval"].get(c)]
        if missing:
            warnings.append(
                f"{len(missing)} training class(es) have no evaluation images and cannot be scored: "
                f"{', '.join(missing[:SHOWN])}{' ...' if len(missing) > SHOWN else ''}"
            )
    return {
        **_finish(spec, classes, chosen, modes, value_range, hashes, warnings),
        "exif_turned": turned,
        "largest_pixels": max((f["pixels"] for f in facts), default=0),
    }


def _finish(spec, classes, splits, modes, value_range, hashes, warnings) -> dict:
    h = hashlib.sha256(json.dumps(classes).encode())
    for split in splits:
        items = splits[split]["items"]
        counts = {c: 0 for c in classes}
        for label, item in items:
            counts[classes[label]] += 1
            h.update(f"{split}\t{label}\t{item}\t".encode())
        for digest in hashes[split]:
            h.update(digest.encode())
        splits[split] = {**splits[split], "images": len(items), "counts": counts}
    return {
        "format": FORMAT,
        "dataset": {k: spec.get(k) for k in SPEC_KEYS},
        "classes": classes,
        "splits": splits,
        "modes": modes,
        "value_range": value_range,
        "warnings": warnings,
        "fingerprint": h.hexdigest(),
    }


SOURCES = {"digits": lambda spec, threads, splits, train: _digits(spec, splits), "imagefolder": _imagefolder}


def scan(spec: dict, threads: int | None = None, split: str | None = None, train: dict | None = None) -> dict:
    """The manifest of a data set (see the module docstring): both splits, or one (`split`). The
    evaluation split alone takes the class list and value range of `train`, the training split's
    manifest (the workflow's data_eval job reads it)."""
    if spec.get("name") not in SOURCES:
        raise PQVError(f"unknown dataset '{spec.get('name')}'", f"use one of {', '.join(SOURCES)}")
    if split == "eval" and train is None and spec["name"] != "digits":
        raise PQVError(
            "the evaluation split alone needs the training split's manifest (its class index)", "give --train results/data/train.json"
        )
    splits = (split,) if split else SPLITS
    return SOURCES[spec["name"]](spec, threads or os.cpu_count() or 1, splits, train)


def run(spec: dict, out: str, threads: int | None = None, split: str | None = None, train: str | None = None) -> dict:
    """CLI entry: scan the data set (both splits, or one) and write its manifest."""
    from ..plan.fileio import write_json

    manifest = scan(spec, threads, split, read(train) if train else None)
    for warning in manifest["warnings"]:
        log.warning(warning)
    write_json(out, manifest)
    counts = ", ".join(f"{s} {manifest['splits'][s]['images']}" for s in manifest["splits"])
    log.info("%d classes; images: %s; modes: %s", len(manifest["classes"]), counts, manifest["modes"])
    return manifest
