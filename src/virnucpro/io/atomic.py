"""Writing outputs so that a failed or killed job never leaves a partial file under a final name.

An output is written to a hidden temporary beside it, `.<name>.tmp-<pid>`, and renamed into place
when it is complete; a job with several outputs renames them all at its end (`atomic_paths`), so
that they appear together or not at all. A job killed with SIGKILL cannot remove its temporaries
(or its scratch directories, `.<name>.scratch-<pid>`); they are removed when an output of the same
name is next written, i.e. when Snakemake reruns the job. That relies on what Snakemake ensures:
one job, one writer, per output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO


def _remove_leftovers(path: Path, kind: str) -> None:
    """Remove `.<name>.<kind>-<pid>` beside `path`: what earlier writers of it, killed, left."""
    prefix = f".{path.name}.{kind}-"
    with os.scandir(path.parent) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name[len(prefix) :].isdigit():
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Yield a temporary path for each of `paths`; when the block succeeds, they replace `paths`,
    in order, after all have been written (so the last is there only if all are)."""
    paths = [Path(path) for path in paths]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(path, "tmp")
    temporaries = [path.with_name(f".{path.name}.tmp-{os.getpid()}") for path in paths]
    try:
        yield temporaries
        for temporary, path in zip(temporaries, paths):
            os.replace(temporary, path)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path that replaces `path` only when the block succeeds.

    A job that fails or is killed therefore never leaves a partial file under the final name.
    """
    with atomic_paths([path]) as (temporary,):
        yield temporary


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w"):
    """Open `path` for writing through `atomic_path` (text in UTF-8, whatever the locale)."""
    with atomic_path(path) as temporary, open(temporary, mode, encoding=None if "b" in mode else "utf-8") as handle:
        yield handle


@contextlib.contextmanager
def scratch_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A directory for the intermediate files of the job that writes `path`, beside it (on the
    same disk as the outputs, not in a small /tmp), removed when the block ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path, "scratch")
    directory = path.with_name(f".{path.name}.scratch-{os.getpid()}")
    directory.mkdir()
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def concatenate_files(paths: Sequence[str | os.PathLike], out: BinaryIO) -> int:
    """Copy each file's bytes, in order, to `out`; return the bytes copied."""
    start = out.tell()
    for path in paths:
        with open(path, "rb") as part:
            shutil.copyfileobj(part, out, 1 << 22)
    return out.tell() - start


def save_figure(figure, path: str | os.PathLike, dpi: int = 100) -> None:
    """Save a matplotlib figure as PNG, atomically."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi)
