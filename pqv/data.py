"""Data stage: the data set, read once and checked for meaning, as a manifest every stage trusts.

`pqv data` walks the configured tree once, decodes every image it selects on the job's cores, and
writes a manifest: the class list, per split the files with their class index, per-class counts,
the image modes seen, the value range of high-bit-depth images and a fingerprint of the bytes it
read. The workflow writes one manifest per split (`--split`: results/data/train.json, eval.json),
so that a job depends on the split it reads; without `--split` both splits go in one file. Every
later stage builds its data set from a manifest (pqv.datasets) and never lists the tree again.

What the manifests guarantee, for ImageFolder trees as people keep them:
- one class index, from the training split, for every split; names starting with `.` (a
  `.ipynb_checkpoints/` folder, macOS `._x.jpg` files) are never classes or images;
- a class of the evaluation split that training lacks is an error naming it; a training class
  with no evaluation images is a warning (in the log and in the manifest): it cannot be scored;
- 16-bit and float images (PIL modes I;16, I, F: microscopy, medical, scans) are scaled linearly
  from the training split's value range to 8 bits, the same range for every image (so classes
  that differ in level stay apart), instead of PIL's convert("RGB"), which clips them to white;
- every selected image decodes, and no class is empty: otherwise one error naming them.

How a change is noticed: `stamp(spec, split)` lists the split's class folders (links followed)
and stats each image file: name, size and modification time. The Snakefile passes it as a
parameter of the split's data rule, computed once per invocation and only when that rule is
planned, so Snakemake reruns the data job, and what reads that split, when an image is added,
removed, renamed or replaced, and for nothing else (a `.DS_Store`, a `chmod`).

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

from . import resources
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
ORIENTATION = 0x0112  # the EXIF tag phones write instead of turning the pixels
# Images above this many pixels are named in one warning per data set: every stage decodes them at
# full size (a 144-megapixel PNG holds ~0.6 GB while it is decoded), and the jobs that read images
# ask for memory for the largest one in each of their loader processes (pqv.resources.Work).
LARGE_PIXELS = 50_000_000
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


def images_in(folder: Path, above: tuple = ()) -> list[str]:
    """Image files under a class folder (as ImageFolder finds them, links followed, hidden entries
    left out), relative to it, sorted; `above`: the split's folder (_enter), for a link back to it."""
    found = []
    above = {os.fspath(folder): _enter(Path(folder), above)}  # each folder's chain of real folders, itself last
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not hidden(d))
        for d in dirs:
            above[os.path.join(root, d)] = _enter(Path(root, d), above[root])
        rel = Path(root).relative_to(folder)
        found += [str(rel / n) for n in sorted(names) if not hidden(n) and n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


# ---- what the Snakefile asks on every run: cheap, no walk ------------------------------------

def stamp(spec: dict, split: str) -> str:
    """A short hash of what a split's manifest is made from: its keys of the dataset section and,
    for ImageFolder, every image file under its class folders (links followed, as the data job
    reads them) by name, size and modification time. Adding, removing, renaming or replacing an
    image changes it; a hidden file (`.DS_Store`), a non-image file (`Thumbs.db`), a permission
    change or a copy re-extracted with the same files does not."""
    keys = [k for k in SPEC_KEYS if k not in {f"{other}_dir" for other in SPLITS if other != split}
            and k not in {f"max_{other}" for other in SPLITS if other != split}]
    parts = [split, json.dumps({k: spec.get(k) for k in keys}, sort_keys=True, default=str)]
    if spec["name"] == "imagefolder":
        folder = split_folder(spec, split)
        try:
            split_root = _enter(folder, ())
            for name in class_folders(folder):
                parts += [f"class {name}", *_files(folder / name, name, split_root)]
        except OSError as e:  # the data job reports it with its fix
            parts.append(f"{split}: {type(e).__name__}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _enter(folder: Path, above: tuple) -> tuple:
    """The chain of real folders (device, inode) from the split down to `folder`; a folder that is
    one of those above it (a symbolic link back up the tree) is a loop, which a walk following links
    would go round without end: one line naming the link and the fix."""
    st = folder.stat()
    key = (st.st_dev, st.st_ino)
    if key in above:
        link = next((p for p in (folder, *folder.parents) if p.is_symlink()), folder)
        raise PQVError(f"symbolic link loop in the data tree: {link} links to {os.path.realpath(link)}, so "
                       f"{folder} is {os.path.realpath(folder)}, a folder above it",
                       f"remove the link {link}, or point it at a folder outside the data tree")
    return (*above, key)


def _files(folder: Path, rel: str, above: tuple = ()) -> list[str]:
    """'path size mtime' of every image under a folder, in the order images_in lists them."""
    out = []
    above = _enter(folder, above)
    with os.scandir(folder) as entries:
        entries = sorted(entries, key=lambda e: e.name)
        for entry in entries:
            if hidden(entry.name):
                continue
            if entry.is_dir():  # follows a link to a folder, as os.walk(followlinks=True) does
                out += _files(Path(entry.path), f"{rel}/{entry.name}", above)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                st = entry.stat()
                out.append(f"{rel}/{entry.name} {st.st_size} {st.st_mtime_ns}")
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


def check_folders(spec: dict) -> None:
    """An ImageFolder data set's split folders exist and the evaluation split has no class the
    training split lacks (the Snakefile asks before a run's first job: a listing of the class
    folders, no image read, so the mistake is named before a model is trained)."""
    if spec.get("name") != "imagefolder":
        return
    for split in SPLITS:
        folder = split_folder(spec, split)
        if not folder.is_dir():
            raise PQVError(f"data folder {folder} does not exist", f"check dataset.root and dataset.{split}_dir in the config")
    _check_classes(spec, class_folders(split_folder(spec, "train")), class_folders(split_folder(spec, "eval")))


def _check_classes(spec: dict, classes: list[str], eval_classes) -> None:
    extra = [c for c in eval_classes if c not in classes]
    if extra:
        raise PQVError(f"the evaluation split {split_folder(spec, 'eval')} has class(es) the training split lacks: "
                       f"{', '.join(extra[:SHOWN])}{' ...' if len(extra) > SHOWN else ''} (the model has no output for them)",
                       "add them to the training split, or remove them from the evaluation split")


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
        _check_classes(spec, classes, found["eval"])
    empty = [f"{split}/{c}" for split in splits for c, files in found[split].items() if not files]
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
        return {"sha256": hashlib.sha256(raw).hexdigest(), "mode": mode, "low": low, "high": high, "turned": turned,
                "pixels": pixels, "problem": None}
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        text = re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", f"{type(e).__name__}: {e}")  # PIL names its buffer
        return {"problem": " ".join(text.split())}


def _imagefolder(spec: dict, threads: int, splits: tuple[str, ...], train: dict | None) -> dict:
    from .progress import progress

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
        log.info("%d image(s) carry an EXIF orientation: every stage reads them turned, as a photo viewer shows "
                 "them (docs/data.md)", turned)
    # High-depth images are scaled by the training split's value range (like any statistic a model
    # is fitted with); an evaluation split on its own takes it from the training split's manifest.
    if "train" in splits:
        deep = [f for f in facts[:len(paths["train"])] if f["low"] is not None]
        value_range = [min(f["low"] for f in deep), max(f["high"] for f in deep)] if deep else None
    else:
        value_range = (train or {}).get("value_range")
    hashes, start = {}, 0
    for split in splits:
        hashes[split] = [f["sha256"] for f in facts[start:start + len(paths[split])]]
        start += len(paths[split])
    warnings = []
    large = [(p, f["pixels"]) for p, f in zip(every, facts) if f["pixels"] > LARGE_PIXELS]
    if large:
        named = ", ".join(f"{p} ({n / 1e6:.0f} MP)" for p, n in large[:SHOWN]) + (" ..." if len(large) > SHOWN else "")
        warnings.append(f"{len(large)} image(s) larger than {LARGE_PIXELS / 1e6:.0f} megapixels: {named}; each is "
                        f"decoded at full size by every stage that reads it (about "
                        f"{resources.decode_mb(max(n for _, n in large)):,.0f} MB for the largest, in every loader process, "
                        f"which the jobs' memory requests include): downscale them once to save memory and time")
    if "eval" in splits:
        missing = [c for c in classes if not found["eval"].get(c)]
        if missing:
            warnings.append(f"{len(missing)} training class(es) have no evaluation images and cannot be scored: "
                            f"{', '.join(missing[:SHOWN])}{' ...' if len(missing) > SHOWN else ''}")
    return {**_finish(spec, classes, chosen, modes, value_range, hashes, warnings), "exif_turned": turned,
            "largest_pixels": max((f["pixels"] for f in facts), default=0)}


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
    return {"format": FORMAT, "dataset": {k: spec.get(k) for k in SPEC_KEYS}, "classes": classes, "splits": splits,
            "modes": modes, "value_range": value_range, "warnings": warnings, "fingerprint": h.hexdigest()}


SOURCES = {"digits": lambda spec, threads, splits, train: _digits(spec, splits), "imagefolder": _imagefolder}


def scan(spec: dict, threads: int | None = None, split: str | None = None, train: dict | None = None) -> dict:
    """The manifest of a data set (see the module docstring): both splits, or one (`split`). The
    evaluation split alone takes the class list and value range of `train`, the training split's
    manifest (the workflow's data_eval job reads it)."""
    if spec.get("name") not in SOURCES:
        raise PQVError(f"unknown dataset '{spec.get('name')}'", f"use one of {', '.join(SOURCES)}")
    if split == "eval" and train is None and spec["name"] != "digits":
        raise PQVError("the evaluation split alone needs the training split's manifest (its class index)",
                       "give --train results/data/train.json")
    splits = (split,) if split else SPLITS
    return SOURCES[spec["name"]](spec, threads or os.cpu_count() or 1, splits, train)


def run(spec: dict, out: str, threads: int | None = None, split: str | None = None, train: str | None = None) -> dict:
    """CLI entry: scan the data set (both splits, or one) and write its manifest."""
    from .store import write_json

    manifest = scan(spec, threads, split, read(train) if train else None)
    for warning in manifest["warnings"]:
        log.warning(warning)
    write_json(out, manifest)
    counts = ", ".join(f"{s} {manifest['splits'][s]['images']}" for s in manifest["splits"])
    log.info("%d classes; images: %s; modes: %s", len(manifest["classes"]), counts, manifest["modes"])
    return manifest


def read(path: str | os.PathLike) -> dict:
    """A manifest written by `pqv data`; a missing or damaged one is a one-line error."""
    from .store import read_json

    manifest = read_json(path, path)
    if manifest.get("format") != FORMAT or not {"classes", "splits", "fingerprint"} <= set(manifest):
        raise PQVError(f"{path} is not a PQV data manifest (format {FORMAT})",
                       f"delete it and run `snakemake --forcerun {path}` (or `pqv data`)")
    manifest["path"] = str(path)
    return manifest


def split_of(manifest: dict, split: str) -> dict:
    """One split of a manifest; a manifest of the other split is a one-line error."""
    if split not in manifest["splits"]:
        where = manifest.get("path", "the data manifest")
        raise PQVError(f"{where} holds the {'/'.join(manifest['splits'])} split, not the {split} split this stage reads",
                       f"give the {split} split's manifest (results/data/{split}.json)")
    return manifest["splits"][split]


def of(source: str | os.PathLike | dict) -> dict:
    """A manifest given as a dict or as the path of its file."""
    return source if isinstance(source, dict) else read(source)
