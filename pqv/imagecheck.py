"""Check an ImageFolder once, before any stage trains or measures on it.

A corrupt JPEG otherwise stops a run with PIL's traceback when the DataLoader reaches it, possibly
hours in, and an empty class folder with torchvision's. pqv.data calls `check_splits(spec)` for
either split, so the first stage that reads the data checks the train and eval folders.
`check(folder)` decodes every image the way ImageFolder would find it (extensions, followed
links), in parallel and at reduced scale (JPEG draft mode still reads the whole compressed
stream, so a cut file is caught), and reports every unreadable file and empty class in one
`PQVError`.

A folder that passed is remembered in a small JSON file under `$PQV_CACHE` (default
`~/.cache/pqv`)/imagecheck, keyed by the folder's path and the modification times of it and its
class folders, which change when files are added, removed or renamed: the check is not repeated
by the next stage or run.
"""
from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import PQVError
from .io import write_json

log = logging.getLogger(__name__)
SHOWN = 5  # unreadable files named in the message; all of them go to the report file


def cache_dir() -> Path:
    return Path(os.environ.get("PQV_CACHE") or Path.home() / ".cache" / "pqv").expanduser() / "imagecheck"


def _key(folder: Path, classes: list[str]) -> str:
    """The folder's path and the mtimes of it and its class folders (adding, removing or renaming a
    file changes its folder's mtime)."""
    parts = [str(folder.resolve()), str(folder.stat().st_mtime_ns)]
    parts += [f"{c}:{(folder / c).stat().st_mtime_ns}" for c in classes]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _images(folder: Path) -> tuple[list[str], dict[str, list[Path]]]:
    """Classes and their image files, as torchvision's ImageFolder finds them."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes

    try:
        classes, _ = find_classes(str(folder))
    except FileNotFoundError:
        return [], {}
    files = {}
    for c in classes:
        found = []
        for root, _, names in sorted(os.walk(folder / c, followlinks=True)):
            found += [Path(root) / n for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS)]
        files[c] = found
    return classes, files


def decode_problem(path: Path) -> str | None:
    """None if PIL decodes the image, else why not (one line)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))  # JPEG: decode at 1/8 scale
            im.load()
        return None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        return " ".join(f"{type(e).__name__}: {e}".split())


def check(folder: str | os.PathLike, workers: int | None = None) -> None:
    """Raise one PQVError naming every unreadable image and empty class of an ImageFolder split."""
    folder = Path(folder)
    classes, files = _images(folder)
    if not classes:
        raise PQVError(f"data folder {folder} has no class folders",
                       "an ImageFolder split holds one folder of images per class")
    cache = cache_dir() / f"{_key(folder, classes)}.json"
    if cache.is_file():
        return
    paths = [p for c in classes for p in files[c]]
    log.info("checking %d images in %s (once: the result is cached in %s)", len(paths), folder, cache.parent)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:  # PIL decodes without the GIL
        problems = [(p, why) for p, why in zip(paths, pool.map(decode_problem, paths, chunksize=64)) if why]
    empty = [c for c in classes if not files[c]]
    if problems or empty:
        raise PQVError(_describe(folder, problems, empty, cache), _fix(problems, empty))
    write_json(cache, {"folder": str(folder.resolve()), "classes": len(classes), "images": len(paths)})


def check_splits(spec: dict) -> None:
    """Check the train and eval folders of an ImageFolder data set: whichever split the first
    stage reads (the model stage may read only eval), a bad image in the other stops it too."""
    root = Path(spec["root"]).expanduser()
    for split, default in (("train", "train"), ("eval", "val")):
        folder = root / spec.get(f"{split}_dir", default)
        if folder.is_dir():  # a missing split is reported by the stage that reads it
            check(folder)


def _describe(folder: Path, problems: list[tuple[Path, str]], empty: list[str], cache: Path) -> str:
    parts = []
    if problems:
        shown = "; ".join(f"{p.relative_to(folder)} ({why})" for p, why in problems[:SHOWN])
        more = ""
        if len(problems) > SHOWN:
            report = cache.with_suffix(".unreadable.txt")
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text("".join(f"{p}\t{why}\n" for p, why in problems))
            more = f"; {len(problems) - SHOWN} more listed in {report}"
        parts.append(f"{len(problems)} unreadable image(s): {shown}{more}")
    if empty:
        parts.append(f"{len(empty)} empty class folder(s): {', '.join(empty)}")
    return f"data folder {folder} has " + " and ".join(parts)


def _fix(problems, empty) -> str:
    fixes = []
    if problems:
        fixes.append("replace or delete the unreadable files")
    if empty:
        fixes.append("add images to the empty classes or remove those folders")
    return " and ".join(fixes)
