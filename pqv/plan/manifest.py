"""The data set as the plan sees it: its folders, a stamp that notices a changed image, an
estimate of its size, the check of its class folders before a run, and its manifests (written by
the data stage, pqv.stages.data; read by every stage and by the plan's budgets).

How a change is noticed: `stamp(spec, split)` lists the split's class folders (links followed)
and stats each image file: name, size and modification time. The Snakefile passes it as a
parameter of the split's data rule, computed once per invocation and only when that rule is
planned, so Snakemake reruns the data job, and what reads that split, when an image is added,
removed, renamed or replaced, and for nothing else (a `.DS_Store`, a `chmod`).

Torch-free and image-free (no PIL): the Snakefile imports it on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .config import Dataset, default
from .errors import PQVError

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
    keys = [
        k
        for k in SPEC_KEYS
        if k not in {f"{other}_dir" for other in SPLITS if other != split}
        and k not in {f"max_{other}" for other in SPLITS if other != split}
    ]
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
        raise PQVError(
            f"symbolic link loop in the data tree: {link} links to {os.path.realpath(link)}, so "
            f"{folder} is {os.path.realpath(folder)}, a folder above it",
            f"remove the link {link}, or point it at a folder outside the data tree",
        )
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
    check_classes(spec, class_folders(split_folder(spec, "train")), class_folders(split_folder(spec, "eval")))


def check_classes(spec: dict, classes: list[str], eval_classes) -> None:
    extra = [c for c in eval_classes if c not in classes]
    if extra:
        raise PQVError(
            f"the evaluation split {split_folder(spec, 'eval')} has class(es) the training split lacks: "
            f"{', '.join(extra[:SHOWN])}{' ...' if len(extra) > SHOWN else ''} (the model has no output for them)",
            "add them to the training split, or remove them from the evaluation split",
        )


def read(path: str | os.PathLike) -> dict:
    """A manifest written by `pqv data`; a missing or damaged one is a one-line error."""
    from .fileio import read_json

    manifest = read_json(path, path)
    if manifest.get("format") != FORMAT or not {"classes", "splits", "fingerprint"} <= set(manifest):
        raise PQVError(
            f"{path} is not a PQV data manifest (format {FORMAT})", f"delete it and run `snakemake --forcerun {path}` (or `pqv data`)"
        )
    manifest["path"] = str(path)
    return manifest


def split_of(manifest: dict, split: str) -> dict:
    """One split of a manifest; a manifest of the other split is a one-line error."""
    if split not in manifest["splits"]:
        where = manifest.get("path", "the data manifest")
        raise PQVError(
            f"{where} holds the {'/'.join(manifest['splits'])} split, not the {split} split this stage reads",
            f"give the {split} split's manifest (results/data/{split}.json)",
        )
    return manifest["splits"][split]


def of(source: str | os.PathLike | dict) -> dict:
    """A manifest given as a dict or as the path of its file."""
    return source if isinstance(source, dict) else read(source)
