"""What identifies the content of an input file or a model, cheaply enough to ask at every run.

Snakemake reruns a job when an input is newer than its outputs; a file replaced by a different
one with an older modification time (a copy that keeps its time, an older download) would keep
stale results. The workflow records each input's and model's identity in a small file that it
rewrites only when the identity changes (`changed_identities`); those files are inputs of the first
jobs, so a changed identity reruns everything after them.

A fingerprint reads the size and the first and last MiB of each file (a model folder: of each of
its files, by name), not the whole file: inputs of 100 million reads and a 5.7 GB ESM-2 3B are read
in milliseconds. The identity adds the modification times, so an edit inside a file that keeps
its size is found too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from virnucpro.io.atomic import atomic_output

_SAMPLED_BYTES = 1 << 20


def _files(path: Path) -> list[tuple[str, Path]]:
    """(name, path) of a file, or of every file in a folder by its relative name."""
    if path.is_dir():
        return sorted((file.relative_to(path).as_posix(), file) for file in path.rglob("*") if file.is_file())
    return [("", path)]


def fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of the size and the first and last MiB of a file, or of each file of a folder with
    its name: the same for a copy, wherever it lies."""
    digest = hashlib.sha256()
    for name, file in _files(Path(path)):
        size = file.stat().st_size
        digest.update(f"{name}\0{size}\0".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(_SAMPLED_BYTES))
            if size > _SAMPLED_BYTES:
                handle.seek(max(_SAMPLED_BYTES, size - _SAMPLED_BYTES))
                digest.update(handle.read())
    return digest.hexdigest()


def identity(path: str | os.PathLike) -> str:
    """The fingerprint and each file's modification time (ns): what `record_identity` keeps."""
    times = " ".join(f"{name or '.'}={file.stat().st_mtime_ns}" for name, file in _files(Path(path)))
    return f"fingerprint {fingerprint(path)}\nmodified {times}\n"


def changed_identities(records: dict[str, str | os.PathLike]) -> dict[str, str]:
    """For each record file -> the file or folder it is about: the current identity of those whose
    record is missing or holds another one."""
    current = {record: identity(path) for record, path in records.items()}
    return {record: text for record, text in current.items()
            if not Path(record).is_file() or Path(record).read_text() != text}


def write_identities(identities: dict[str, str]) -> None:
    for record, text in identities.items():
        with atomic_output(record) as out:
            out.write(text)
