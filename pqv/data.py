"""Data stage: the data set, read once and checked for meaning, as a manifest every stage trusts.

`pqv data` walks the configured tree once, decodes every image it selects on the job's cores, and
writes `results/data/manifest.json`: the class list, per split the files with their class index,
per-class counts, the image modes seen, the value range of high-bit-depth images and a fingerprint
of the bytes it read. Every later stage builds its data set from that file (pqv.datasets) and never
lists the tree again.

What the manifest guarantees, for ImageFolder trees as people keep them:
- one class index, from the training split, for every split; names starting with `.` (a
  `.ipynb_checkpoints/` folder, macOS `._x.jpg` files) are never classes or images;
- a class of the evaluation split that training lacks is an error naming it; a training class
  with no evaluation images is a warning (in the log and in the manifest): it cannot be scored;
- 16-bit and float images (PIL modes I;16, I, F: microscopy, medical, scans) are scaled linearly
  from the data set's value range to 8 bits, the same range for every image (so classes that
  differ in level stay apart), instead of PIL's convert("RGB"), which clips them to white;
- every selected image decodes, and no class is empty: otherwise one error naming them.

How a change is noticed without walking the tree: `stamp(spec)` stats the class folders of each
split (one listing of each split folder, one stat per class folder): their inode, modification and
change times. Adding, removing or renaming a file changes its class folder's times, and so does
re-extracting a copy (tar restores mtimes but not change times). The Snakefile passes the stamp
as a parameter of the data rule, so Snakemake reruns the data job, and what reads the data, when
it changes. An image overwritten in place under the same name changes no folder: run
`snakemake --forcerun data` after such an edit (docs/data.md).

Torch-free on purpose: the Snakefile imports `stamp` and `estimate` on every run.
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

from .config import Dataset, default
from .errors import PQVError

log = logging.getLogger(__name__)

FORMAT = 1  # the manifest's layout; a manifest of another layout is rebuilt
SPLITS = ("train", "eval")
DEFAULT_DIRS = {split: default(Dataset, f"{split}_dir") for split in SPLITS}
# The extensions torchvision's ImageFolder reads (torchvision.datasets.folder.IMG_EXTENSIONS).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# PIL modes whose values do not fit 8 bits: convert("RGB") would clip them (I;16 from 16-bit PNG/TIFF).
HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
SHOWN = 5  # unreadable files named in the error line; the log lists all of them
# The keys of the dataset section that say what the data set is (not how it is loaded).
SPEC_KEYS = tuple(k for k in Dataset.model_fields if k != "workers")


def hidden(name: str) -> bool:
    return name.startswith(".")


def split_folder(spec: dict, split: str) -> Path:
    root = spec.get("root")
    if not root:
        raise PQVError("dataset 'imagefolder' needs dataset.root", "set dataset.root to the folder holding train/ and val/")
    return Path(root).expanduser() / (spec.get(f"{split}_dir") or DEFAULT_DIRS[split])


def class_folders(folder: Path) -> list[str]:
    """The class folders of a split: its sub-folders (links followed), hidden ones left out, sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not hidden(e.name) and e.is_dir())


def images_in(folder: Path) -> list[str]:
    """Image files under a class folder (as ImageFolder finds them, links followed, hidden entries
    left out), relative to it, sorted."""
    found = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not hidden(d))
        rel = Path(root).relative_to(folder)
        found += [str(rel / n) for n in sorted(names) if not hidden(n) and n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


# ---- what the Snakefile asks on every run: cheap, no walk ------------------------------------

def stamp(spec: dict) -> str:
    """A short hash of what changes when files are added to, removed from or renamed in a class
    folder (or a folder inside one), or the tree is extracted again: each such folder's inode,
    mtime and ctime."""
    spec = {k: spec.get(k) for k in SPEC_KEYS}
    parts = [json.dumps(spec, sort_keys=True)]
    if spec["name"] == "imagefolder":
        for split in SPLITS:
            folder = split_folder(spec, split)
            try:
                for name in class_folders(folder):
                    for rel, st in _folders(folder / name, name):
                        parts.append(f"{split}/{rel} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}")
            except OSError as e:  # the data job reports it with its fix
                parts.append(f"{split}: {type(e).__name__}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _folders(folder: Path, rel: str) -> list[tuple[str, os.stat_result]]:
    """A class folder and the folders inside it (ImageFolder reads images at any depth), found
    without listing a folder that has none: a folder's link count is 2 plus its sub-folders on
    POSIX file systems; where it is not counted (1, as on btrfs), the folder is listed."""
    st = os.stat(folder)
    out = [(rel, st)]
    if st.st_nlink == 2:
        return out
    with os.scandir(folder) as entries:
        inner = sorted(e.name for e in entries if not hidden(e.name) and e.is_dir())
    for name in inner:
        out += _folders(folder / name, f"{rel}/{name}")
    return out


def estimate(spec: dict, sampled: int = 5) -> dict:
    """Images per split without a walk (for the data job's cluster budget, before any manifest):
    the class folders are counted and a few of them listed."""
    if spec["name"] == "digits":
        return {"train": 1437, "eval": 360, "classes": 10}
    out = {"classes": 0}
    for split in SPLITS:
        try:
            folder = split_folder(spec, split)
            classes = class_folders(folder)
            step = max(1, len(classes) // sampled)
            picked = classes[::step][:sampled]
            per_class = sum(len(os.listdir(folder / c)) for c in picked) / max(1, len(picked))
        except OSError:
            classes, per_class = [], 0
        out[split] = int(len(classes) * per_class)
        if split == "train":
            out["classes"] = len(classes)
        limit = spec.get(f"max_{split}")
        if limit:
            out[split] = min(out[split], limit)
    return out


# ---- the data job: one walk, every selected image decoded ------------------------------------

def _subset(n: int, limit: int | None, seed: int) -> list[int]:
    """A fixed random subset of `n` items (all of them without a limit), in order."""
    if not limit or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def _digits(spec: dict) -> dict:
    """scikit-learn's 1,797 handwritten 8x8 digits, split 80/20 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    seed = spec.get("split_seed") or 0
    idx = dict(zip(SPLITS, train_test_split(list(range(len(y))), test_size=0.2, stratify=y, random_state=seed)))
    classes = [str(c) for c in range(10)]
    splits = {}
    for split in SPLITS:
        chosen = [idx[split][i] for i in _subset(len(idx[split]), spec.get(f"max_{split}"), seed)]
        splits[split] = {"items": [[int(y[i]), int(i)] for i in chosen]}
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    hashes = {split: [digest] * len(splits[split]["items"]) for split in SPLITS}
    return _finish(spec, classes, splits, {"8x8 gray, 17 levels": len(y)}, None, hashes, warnings=[])


def check_folders(spec: dict) -> None:
    """An ImageFolder data set's split folders exist (the Snakefile asks before a run's first job)."""
    if spec.get("name") != "imagefolder":
        return
    for split in SPLITS:
        folder = split_folder(spec, split)
        if not folder.is_dir():
            raise PQVError(f"data folder {folder} does not exist", f"check dataset.root and dataset.{split}_dir in the config")


def _listing(spec: dict) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
    """The tree, listed once: the class list (training split) and each split's images per class."""
    found = {}
    check_folders(spec)
    for split in SPLITS:
        folder = split_folder(spec, split)
        names = class_folders(folder)
        if not names:
            raise PQVError(f"data folder {folder} has no class folders", "an ImageFolder split holds one folder of images per class")
        found[split] = {c: images_in(folder / c) for c in names}
    classes = list(found["train"])
    extra = [c for c in found["eval"] if c not in found["train"]]
    if extra:
        raise PQVError(f"the evaluation split {split_folder(spec, 'eval')} has class(es) the training split lacks: "
                       f"{', '.join(extra[:SHOWN])}{' ...' if len(extra) > SHOWN else ''} (the model has no output for them)",
                       "add them to the training split, or remove them from the evaluation split")
    empty = [f"{split}/{c}" for split in SPLITS for c, files in found[split].items() if not files]
    if empty:
        raise PQVError(f"{len(empty)} empty class folder(s) in {spec['root']}: {', '.join(empty[:SHOWN])}",
                       "add images to the empty classes or remove those folders")
    return classes, found


def inspect(path: str | os.PathLike) -> dict:
    """Read and decode one image: its bytes' hash, PIL mode and, for high-depth modes, the value
    range; `problem` says why it cannot be used."""
    import numpy as np
    from PIL import Image

    try:
        raw = Path(path).read_bytes()
        with Image.open(_io.BytesIO(raw)) as im:
            mode = im.mode
            im.draft(mode, (max(1, im.width // 8), max(1, im.height // 8)))  # JPEG: decode at 1/8 scale
            im.load()
            low = high = None
            if mode in HIGH_DEPTH:
                values = np.asarray(im)
                if not np.isfinite(values).all():
                    return {"problem": "ValueError: non-finite pixel values"}
                low, high = float(values.min()), float(values.max())
        return {"sha256": hashlib.sha256(raw).hexdigest(), "mode": mode, "low": low, "high": high, "problem": None}
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        text = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", f"{type(e).__name__}: {e}")  # PIL names its buffer
        return {"problem": " ".join(text.split())}


def _imagefolder(spec: dict, threads: int) -> dict:
    from .progress import progress

    classes, found = _listing(spec)
    index = {c: i for i, c in enumerate(classes)}
    seed = spec.get("split_seed") or 0
    splits, paths = {}, {}
    for split in SPLITS:
        folder = split_folder(spec, split).resolve()
        items = [[index[c], f"{c}/{rel}"] for c in found[split] for rel in found[split][c]]
        items = [items[i] for i in _subset(len(items), spec.get(f"max_{split}"), seed)]
        splits[split] = {"folder": str(folder), "items": items}
        paths[split] = [folder / rel for _, rel in items]
    every = [p for split in SPLITS for p in paths[split]]
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
    deep = [f for f in facts if f["low"] is not None]
    value_range = [min(f["low"] for f in deep), max(f["high"] for f in deep)] if deep else None
    hashes, start = {}, 0
    for split in SPLITS:
        hashes[split] = [f["sha256"] for f in facts[start:start + len(paths[split])]]
        start += len(paths[split])
    missing = [c for c in classes if not found["eval"].get(c)]
    warnings = []
    if missing:
        warnings.append(f"{len(missing)} training class(es) have no evaluation images and cannot be scored: "
                        f"{', '.join(missing[:SHOWN])}{' ...' if len(missing) > SHOWN else ''}")
    return _finish(spec, classes, splits, modes, value_range, hashes, warnings)


def _finish(spec, classes, splits, modes, value_range, hashes, warnings) -> dict:
    h = hashlib.sha256(json.dumps(classes).encode())
    for split in SPLITS:
        items = splits[split]["items"]
        counts = {c: 0 for c in classes}
        for label, item in items:
            counts[classes[label]] += 1
            h.update(f"{split}\t{label}\t{item}\t".encode())
        for digest in hashes[split]:
            h.update(digest.encode())
        splits[split] = {**splits[split], "images": len(items), "counts": counts}
    return {"format": FORMAT, "dataset": {k: spec.get(k) for k in SPEC_KEYS}, "classes": classes, "splits": splits,
            "modes": modes, "value_range": value_range, "warnings": warnings, "fingerprint": h.hexdigest()}


SOURCES = {"digits": lambda spec, threads: _digits(spec), "imagefolder": _imagefolder}


def scan(spec: dict, threads: int | None = None) -> dict:
    """The manifest of a data set (see the module docstring)."""
    if spec.get("name") not in SOURCES:
        raise PQVError(f"unknown dataset '{spec.get('name')}'", f"use one of {', '.join(SOURCES)}")
    return SOURCES[spec["name"]](spec, threads or os.cpu_count() or 1)


def run(spec: dict, out: str, threads: int | None = None) -> dict:
    """CLI entry: scan the data set and write its manifest."""
    from .store import write_json

    manifest = scan(spec, threads)
    for warning in manifest["warnings"]:
        log.warning(warning)
    write_json(out, manifest)
    counts = ", ".join(f"{s} {manifest['splits'][s]['images']}" for s in SPLITS)
    log.info("%d classes; images: %s; modes: %s", len(manifest["classes"]), counts, manifest["modes"])
    return manifest


def read(path: str | os.PathLike) -> dict:
    """A manifest written by `pqv data`; a missing or damaged one is a one-line error."""
    from .store import read_json

    manifest = read_json(path, path)
    if manifest.get("format") != FORMAT or not {"classes", "splits", "fingerprint"} <= set(manifest):
        raise PQVError(f"{path} is not a PQV data manifest (format {FORMAT})",
                       "delete it and run `snakemake --forcerun data` (or `pqv data`)")
    return manifest


def of(source: str | os.PathLike | dict) -> dict:
    """A manifest given as a dict or as the path of its file."""
    return source if isinstance(source, dict) else read(source)
