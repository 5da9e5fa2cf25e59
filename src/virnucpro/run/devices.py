"""Choosing the device for a GPU job, and making sure no two jobs share a GPU.

Snakemake's `--resources gpu=N` limits how many GPU jobs run at once, but does not say which GPU
each should use. Each job therefore leases one: it takes an exclusive `flock` on a per-GPU lock
file in a node-local directory and keeps it for its lifetime. The kernel drops the lock when the
process ends, however it ends, so a crashed job frees its GPU; and every job of the user on the
node uses the same directory, so two Snakemake runs side by side never pick the same GPU either.

The directory is the user's own by default (`/tmp/virnucpro-gpu-locks-{uid}`, created 0700): no
other user can plant files in it. Lock files are opened read-only, never following a symbolic
link and never truncated or written: the lock is the `flock`, not the content, so that even in a
directory shared between users (one with the sticky bit, like /tmp, set up for jobs of several
users to share a node's GPUs) a planted link can make a job do no harm.

The candidates are the GPUs the job may see: those listed in CUDA_VISIBLE_DEVICES when it is set
(by the user, or by SLURM for the job's allocation), otherwise all of them. The leased GPU is then
made the only visible one, before CUDA is initialised, and is `cuda:0` inside the job.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEVICE_SETTINGS = ("auto", "cpu", "cuda")
DEFAULT_LOCK_DIR = "/tmp/virnucpro-gpu-locks-{uid}"


@dataclass(frozen=True)
class GpuCandidate:
    visible_id: str  # how CUDA_VISIBLE_DEVICES names it
    lock_key: str  # the same GPU for every process on the node: its UUID when NVML knows it


@dataclass(frozen=True)
class Lease:
    device: str  # "cpu" or "cuda:0"
    gpu: GpuCandidate | None
    cpu_fallback: str | None = None  # why a job that seems to have a GPU runs on the CPU

    @property
    def uuid(self) -> str | None:
        return self.gpu.lock_key if self.gpu and self.gpu.lock_key.startswith(("GPU-", "MIG-")) else None


def _nvml_uuids() -> tuple[list[str] | None, str | None]:
    """UUIDs of the node's GPUs by NVML index, or None and why NVML is not usable."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:  # no library, no driver, a driver/library mismatch, ...
        return None, f"{type(error).__name__}: {error}"
    try:
        uuids = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
            uuids.append(uuid.decode() if isinstance(uuid, bytes) else uuid)
        return uuids, None
    except Exception as error:
        return None, f"{type(error).__name__}: {error}"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _visible_gpu_signs() -> list[str]:
    """What says that this job has a GPU although NVML cannot be used: NVIDIA device nodes, or a
    CUDA_VISIBLE_DEVICES that names one (as a scheduler sets it for a job given a GPU)."""
    signs = sorted(path for path in glob.glob("/dev/nvidia*") if path.removeprefix("/dev/nvidia").isdigit())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.split(",")[0].strip() not in ("", "-1"):
        signs.append(f"CUDA_VISIBLE_DEVICES={visible}")
    return signs


def gpu_candidates(visible: str | None, uuids: list[str]) -> list[GpuCandidate]:
    """The GPUs this job may use, from CUDA_VISIBLE_DEVICES (`visible`) and NVML's UUIDs."""
    if visible is None:
        return [GpuCandidate(str(index), uuid) for index, uuid in enumerate(uuids)]
    candidates = []
    for entry in (e.strip() for e in visible.split(",")):
        if not entry or entry == "-1":
            break  # CUDA stops at the first invalid entry
        if entry.isdigit():
            index = int(entry)
            candidates.append(GpuCandidate(entry, uuids[index] if index < len(uuids) else f"index-{entry}"))
        else:
            full = next((u for u in uuids if u == entry or u.startswith(entry) or u == f"GPU-{entry}"), entry)
            candidates.append(GpuCandidate(entry, full))
    return candidates


def job_gpus(setting: str) -> tuple[list[GpuCandidate], str | None]:
    """The GPUs a job with this device setting may lease and, when it is to run on the CPU although
    it seems to have a GPU, a warning that says why.

    Raises RuntimeError for "cuda" when no GPU is visible.
    """
    if setting not in DEVICE_SETTINGS:
        raise ValueError(f"device must be one of {DEVICE_SETTINGS}, got '{setting}'")
    if setting == "cpu":
        return [], None
    uuids, nvml_problem = _nvml_uuids()
    # Without NVML there is no usable GPU driver; "auto" then runs on the CPU even where a
    # scheduler has set CUDA_VISIBLE_DEVICES (and says so), while "cuda" trusts that variable.
    if setting == "auto" and not uuids:
        signs = _visible_gpu_signs()
        warning = None
        if signs:
            warning = (f"embedding.device is 'auto' and this job seems to have a GPU ({', '.join(signs)}), but "
                       f"NVML cannot be used ({nvml_problem or 'it lists no GPU'}): running on the CPU, which is "
                       "orders of magnitude slower. Fix the GPU driver, or set embedding.device to 'cuda' to "
                       "make this an error, or to 'cpu' to silence this warning.")
        return [], warning
    candidates = gpu_candidates(os.environ.get("CUDA_VISIBLE_DEVICES"), uuids or [])
    if setting == "cuda" and not candidates:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        seen = [f"CUDA_VISIBLE_DEVICES={visible}"] if visible is not None else []
        seen += [f"NVML: {nvml_problem}"] if nvml_problem else []
        raise RuntimeError(f"embedding.device is 'cuda' but no GPU is visible on {socket.gethostname()}"
                           + (f" ({'; '.join(seen)})" if seen else ""))
    return candidates, None


def lock_directory(setting: str) -> str:
    """The lock directory of `embedding.gpu_lock_dir`: '{uid}' in it becomes the user's ID."""
    return setting.replace("{uid}", str(os.getuid()))


def _open_lock_directory(path: Path) -> int:
    """A descriptor of the lock directory, created 0700 if missing; refuses a directory that
    another user could use to break or subvert the lease."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EEXIST):  # EEXIST: a dangling link
            raise RuntimeError(f"GPU lock directory {path} is a symbolic link or not a directory; refusing it "
                               "(remove it, or set embedding.gpu_lock_dir)") from None
        raise
    info = os.fstat(descriptor)
    problem = None
    if info.st_uid not in (os.getuid(), 0):
        problem = f"it belongs to user {info.st_uid}"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
        problem = "other users may write to it and it has no sticky bit (chmod +t, as /tmp has)"
    if problem:
        os.close(descriptor)
        raise RuntimeError(f"GPU lock directory {path}: {problem}; refusing it (remove it, or set "
                           "embedding.gpu_lock_dir)")
    return descriptor


def _open_lock_file(directory: int, path: Path) -> int:
    """The lock file, opened read-only without following a link; created if missing."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            descriptor = os.open(path.name, flags, dir_fd=directory)
        except FileNotFoundError:
            try:
                descriptor = os.open(path.name, flags | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=directory)
            except FileExistsError:  # another job made it meanwhile
                descriptor = os.open(path.name, flags, dir_fd=directory)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RuntimeError(f"GPU lock file {path} is a symbolic link; refusing it") from None
        raise
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise RuntimeError(f"GPU lock file {path} is not a regular file; refusing it")
    return descriptor


def _try_lock(directory: int, lock_dir: Path, candidate: GpuCandidate) -> int | None:
    descriptor = _open_lock_file(directory, lock_dir / f"{candidate.lock_key}.lock")
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


@contextlib.contextmanager
def lease_device(setting: str, lock_dir: str | os.PathLike, poll_seconds: float = 2.0) -> Iterator[Lease]:
    """Lease a device for the duration of a job: a GPU of its own, or the CPU.

    `setting` is "cpu", "cuda" (a GPU is required) or "auto" (a GPU when there is one). When every
    candidate GPU is leased by another job, this waits for one to be freed rather than share it.
    `lock_dir` is the lock directory (see `lock_directory`). Must run before anything initialises
    CUDA in this process.
    """
    candidates, cpu_fallback = job_gpus(setting)
    if not candidates:
        if cpu_fallback:
            log.warning("%s", "!" * 100)
            log.warning("%s", cpu_fallback)
            log.warning("%s", "!" * 100)
        yield Lease("cpu", None, cpu_fallback)
        return
    lock_dir = Path(lock_dir)
    directory = _open_lock_directory(lock_dir)
    waited_since = None
    try:
        while True:
            for candidate in candidates:
                descriptor = _try_lock(directory, lock_dir, candidate)
                if descriptor is not None:
                    break
            else:
                if waited_since is None:
                    waited_since = time.monotonic()
                    log.warning("all %d candidate GPUs are leased by other jobs; waiting for one", len(candidates))
                time.sleep(poll_seconds)
                continue
            break
    finally:
        os.close(directory)
    if waited_since is not None:
        log.info("waited %.0f s for a free GPU", time.monotonic() - waited_since)
    os.environ["CUDA_VISIBLE_DEVICES"] = candidate.visible_id
    log.info("leased GPU %s (%s)", candidate.visible_id, candidate.lock_key)
    try:
        yield Lease("cuda:0", candidate)
    finally:
        os.close(descriptor)
