"""Choosing the device for a GPU job, and making sure no two jobs share a GPU.

Snakemake's `--resources gpu=N` limits how many GPU jobs run at once, but does not say which GPU
each should use. Each job therefore leases one: it takes an exclusive `flock` on a per-GPU lock
file in a node-local directory and keeps it for its lifetime. The kernel drops the lock when the
process ends, however it ends, so a crashed job frees its GPU; and the lock directory is shared by
every process on the node, so two Snakemake runs side by side never pick the same GPU either.

The candidates are the GPUs the job may see: those listed in CUDA_VISIBLE_DEVICES when it is set
(by the user, or by SLURM for the job's allocation), otherwise all of them. The leased GPU is then
made the only visible one, before CUDA is initialised, and is `cuda:0` inside the job.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEVICE_SETTINGS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class GpuCandidate:
    visible_id: str  # how CUDA_VISIBLE_DEVICES names it
    lock_key: str  # the same GPU for every process on the node: its UUID when NVML knows it


@dataclass(frozen=True)
class Lease:
    device: str  # "cpu" or "cuda:0"
    gpu: GpuCandidate | None

    @property
    def uuid(self) -> str | None:
        return self.gpu.lock_key if self.gpu and self.gpu.lock_key.startswith(("GPU-", "MIG-")) else None


def _nvml_uuids() -> list[str] | None:
    """UUIDs of the node's GPUs by NVML index, or None when NVML is not usable."""
    try:
        import pynvml

        pynvml.nvmlInit()
        uuids = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))
            uuids.append(uuid.decode() if isinstance(uuid, bytes) else uuid)
        return uuids
    except Exception:
        return None


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


def _try_lock(lock_dir: Path, candidate: GpuCandidate) -> int | None:
    path = lock_dir / f"{candidate.lock_key}.lock"
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    return descriptor


@contextlib.contextmanager
def lease_device(setting: str, lock_dir: str | os.PathLike, poll_seconds: float = 2.0) -> Iterator[Lease]:
    """Lease a device for the duration of a job: a GPU of its own, or the CPU.

    `setting` is "cpu", "cuda" (a GPU is required) or "auto" (a GPU when there is one). When every
    candidate GPU is leased by another job, this waits for one to be freed rather than share it.
    Must run before anything initialises CUDA in this process.
    """
    if setting not in DEVICE_SETTINGS:
        raise ValueError(f"device must be one of {DEVICE_SETTINGS}, got '{setting}'")
    uuids = None if setting == "cpu" else _nvml_uuids()
    # Without NVML there is no usable GPU driver; "auto" then runs on the CPU even where a
    # scheduler has set CUDA_VISIBLE_DEVICES, while "cuda" trusts that variable.
    if setting == "cpu" or (setting == "auto" and not uuids):
        candidates = []
    else:
        candidates = gpu_candidates(os.environ.get("CUDA_VISIBLE_DEVICES"), uuids or [])
    if not candidates:
        if setting == "cuda":
            raise RuntimeError("embedding.device is 'cuda' but no GPU is visible to this job")
        yield Lease("cpu", None)
        return
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        lock_dir.chmod(0o1777)  # shared by every user's jobs on the node
    waited_since = None
    while True:
        for candidate in candidates:
            descriptor = _try_lock(lock_dir, candidate)
            if descriptor is not None:
                break
        else:
            if waited_since is None:
                waited_since = time.monotonic()
                log.warning("all %d candidate GPUs are leased by other jobs; waiting for one", len(candidates))
            time.sleep(poll_seconds)
            continue
        break
    if waited_since is not None:
        log.info("waited %.0f s for a free GPU", time.monotonic() - waited_since)
    os.environ["CUDA_VISIBLE_DEVICES"] = candidate.visible_id
    log.info("leased GPU %s (%s)", candidate.visible_id, candidate.lock_key)
    try:
        yield Lease("cuda:0", candidate)
    finally:
        os.close(descriptor)
