"""Writing outputs so that a failed or killed job never leaves a partial file under a final name."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path that replaces `path` only when the block succeeds.

    A job that fails or is killed therefore never leaves a partial file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w"):
    """Open `path` for writing through `atomic_path` (text in UTF-8, whatever the locale)."""
    with atomic_path(path) as temporary, open(temporary, mode, encoding=None if "b" in mode else "utf-8") as handle:
        yield handle


def concatenate_files(paths: list[str | os.PathLike], output_path: str | os.PathLike, header: bytes = b"") -> int:
    """Write `header` and then each file's bytes, in order, to `output_path`; return the bytes written."""
    with atomic_output(output_path, "wb") as out:
        out.write(header)
        for path in paths:
            with open(path, "rb") as part:
                shutil.copyfileobj(part, out, 1 << 22)
        return out.tell()
