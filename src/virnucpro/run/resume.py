"""Resuming an interrupted run with the same command.

Two things stand in the way after a run is killed with SIGKILL (by hand, by the out-of-memory
killer, or with its terminal's process group); Snakemake itself reruns the jobs the run left
incomplete (`rerun-incomplete` in profiles/default) and the jobs remove what their killed
predecessors left (`virnucpro.io.atomic`).

- Snakemake's lock. Snakemake locks its working directory while it runs (`.snakemake/locks/`) and
  removes the lock when it ends, also when a job fails or the run is stopped with Ctrl-C or
  SIGTERM, but not after SIGKILL: every later run stops with a LockException until
  `snakemake --unlock`. Its lock files do not say who holds them. So each run of this workflow
  records its main process beside them when it starts (`record_owner`, from the Snakefile's
  `onstart`), and a new run removes the lock when every run recorded there is gone
  (`remove_stale_lock`, when the Snakefile is read): a process of this host whose PID no longer
  exists with the same start time in the same boot. A lock without a record, or held by a run on
  another host, is left to Snakemake's own error and its advice (`--unlock`). While a run recorded
  there still runs on this host, a second run that Snakemake refuses is told which one (its PID and
  start; `running_owners`) instead of being advised `--unlock`, which would harm it. A lock folder
  that is a symbolic link is refused: the owner records would be written, and the lock removed,
  wherever it points.
- Temporary files. Snakemake deletes a `temp()` file when its last consumer finishes, and those
  of stages 1-2 only once the shard plan (a checkpoint) is made; a run killed before has made
  them, and the run that resumes it does not rerun the jobs that would delete them. They can be
  large (a copy of the input, its chunks): `remove_leftover_temp_files` deletes them when the
  resumed run has succeeded (the Snakefile's `onsuccess`).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
from pathlib import Path

from virnucpro.io.atomic import atomic_output
from virnucpro.io.errors import VirnucproError

LOCK_DIRECTORY = Path(".snakemake") / "locks"
_OWNER_PREFIX = "virnucpro-owner-"


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start_ticks(pid: int | str = "self") -> int | None:
    """When process `pid` started, in clock ticks since boot (Linux only), or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
    except (OSError, ValueError, IndexError):
        return None


def check_lock_directory(lock_directory: Path = LOCK_DIRECTORY) -> None:
    """Refuse a lock folder that is a symbolic link (as the GPU lock folder is refused)."""
    if lock_directory.is_symlink():
        raise VirnucproError(f"{lock_directory} is a symbolic link (to {os.readlink(lock_directory)}): refused, the "
                             "run's lock would be written and removed there; remove the link")


def record_owner(lock_directory: Path = LOCK_DIRECTORY) -> None:
    """Record this process, a Snakemake run's main process, as a holder of the lock."""
    check_lock_directory(lock_directory)
    if not lock_directory.is_dir():  # --nolock
        return
    owner = {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(),
             "start_ticks": process_start_ticks(),
             "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
    # written under a temporary name and renamed: a link planted at the record's name is replaced, not followed
    with atomic_output(lock_directory / f"{_OWNER_PREFIX}{os.getpid()}.json") as record:
        record.write(json.dumps(owner) + "\n")


def _owners(lock_directory: Path) -> list[dict] | None:
    """The runs recorded as holding the lock; None while a record is being written or is damaged."""
    records = sorted(lock_directory.glob(f"{_OWNER_PREFIX}*.json")) if lock_directory.is_dir() else []
    try:
        return [json.loads(record.read_text()) for record in records]
    except (OSError, ValueError):
        return None


def _gone(owner: dict) -> bool:
    """Whether the recorded process surely no longer runs (False when that cannot be told)."""
    if owner.get("host") != socket.gethostname():
        return False
    boot = _boot_id()
    if boot is None or owner.get("boot") is None or owner.get("start_ticks") is None:
        return False
    return owner["boot"] != boot or process_start_ticks(owner["pid"]) != owner["start_ticks"]


def remove_stale_lock(lock_directory: Path = LOCK_DIRECTORY) -> list[dict]:
    """Remove the lock when every run recorded as holding it is gone; the runs whose lock was
    removed (none when the lock is held, has no record, or there is no lock)."""
    check_lock_directory(lock_directory)
    owners = _owners(lock_directory)  # None: being written, or damaged: leave the lock to Snakemake
    if not owners or not all(_gone(owner) for owner in owners):
        return []
    shutil.rmtree(lock_directory, ignore_errors=True)
    return owners


def running_owners(lock_directory: Path = LOCK_DIRECTORY) -> list[dict]:
    """The runs recorded as holding the lock whose process still runs on this host."""
    return [owner for owner in _owners(lock_directory) or []
            if owner.get("host") == socket.gethostname() and owner.get("boot") == _boot_id()
            and owner.get("start_ticks") is not None and process_start_ticks(owner["pid"]) == owner["start_ticks"]]


def remove_leftover_temp_files(paths) -> list[str]:
    """Delete these temporary outputs (files or directories) where they exist; those deleted."""
    removed = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
        else:
            continue
        removed.append(path)
    return removed
