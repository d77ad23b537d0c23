"""A model's files: what they are (relative path, SHA-256, size), one digest over all of
them, a checked copy into the registry's store, and the check before every load."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterable
from pathlib import Path

from imaging.core.modelhub.conventions import ModelDescriptionError, ModelFile
from imaging.core.segmentation.network import file_sha256

#: Files that say nothing about a model and change on their own (caches, OS droppings).
IGNORED_NAMES = {".DS_Store", "__pycache__", "Thumbs.db"}
MAX_MODEL_BYTES = 8 * 2**30


def model_files_describe(*, root: Path) -> tuple[ModelFile, ...]:
    """Every file under ``root`` (or ``root`` itself when it is a file), sorted by path."""
    root = Path(root)
    if root.is_file():
        return (ModelFile(root.name, file_sha256(root), root.stat().st_size),)
    if not root.is_dir():
        raise ModelDescriptionError(f"{root}: no such file or folder")
    files = []
    total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if any(part in IGNORED_NAMES for part in relative.parts):
            continue
        if path.is_symlink():
            raise ModelDescriptionError(f"{path}: a symbolic link; copy the file itself")
        total += path.stat().st_size
        if total > MAX_MODEL_BYTES:
            raise ModelDescriptionError(f"{root}: more than {MAX_MODEL_BYTES >> 30} GiB of files")
        files.append(ModelFile(relative.as_posix(), file_sha256(path), path.stat().st_size))
    if not files:
        raise ModelDescriptionError(f"{root}: the folder holds no files")
    return tuple(files)


def model_digest(files: Iterable[ModelFile]) -> str:
    """SHA-256 over the sorted (path, SHA-256) pairs: the model version's one checksum."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        digest.update(f"{f.path}\t{f.sha256}\n".encode())
    return digest.hexdigest()


def model_files_verify(*, root: Path, files: Iterable[ModelFile]) -> None:
    """Refuse a model whose files were removed or altered since it was registered."""
    root = Path(root)
    problems = []
    for f in files:
        path = root / f.path if root.is_dir() else root
        if not path.is_file():
            problems.append(f"{f.path} is missing")
        elif path.stat().st_size != f.bytes or file_sha256(path) != f.sha256:
            problems.append(f"{f.path} differs from its registered SHA-256 {f.sha256[:16]}...")
    if problems:
        raise ModelDescriptionError(
            f"model files under {root} do not match the registry: {'; '.join(problems)}; "
            "refusing to load them"
        )


def model_files_copy(*, source: Path, target: Path, files: Iterable[ModelFile]) -> None:
    """Copy the described files of ``source`` under ``target`` (a new folder), then check
    them; a failed copy leaves no folder behind."""
    source, target = Path(source), Path(target)
    if target.exists():
        raise ModelDescriptionError(f"{target} already exists: that version was stored before")
    files = tuple(files)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for f in files:
            origin = source / f.path if source.is_dir() else source
            destination = partial / f.path
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, destination)
        model_files_verify(root=partial, files=files)
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
