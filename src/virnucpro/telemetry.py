"""Per-job telemetry: what each rule did, how long it took and what it used.

Every rule script runs inside `JobTelemetry`, which writes `results/telemetry/<stage>/<sample>.<unit>.json`
(the unit is the job's part of the input, its shard, or `all`)
when the job ends, also when it fails (with the error). Snakemake treats the file as a log, so it
keeps it after a failure instead of deleting it with the job's outputs. Each file names the run
(the Snakemake invocation) the job ran in, from RUN_ID_VARIABLE, which the workflow sets once per
invocation and hands to every job, so that the report can tell this run's jobs from those of
earlier runs whose outputs are reused.

GPU jobs add NVML samples over the job (utilisation, memory, power) and the energy used, through
nvidia-ml-py; without a GPU or NVML that part is simply absent.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import resource
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from virnucpro.files import atomic_output

log = logging.getLogger(__name__)

RUN_ID_VARIABLE = "VIRNUCPRO_RUN_ID"


def new_run_id() -> str:
    """A run's identifier: the time it started, in UTC."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def configure_logging(log_path: str | os.PathLike | None) -> None:
    """Log to the rule's log file (and stderr), with timestamps."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _seconds_since_process_start() -> float | None:
    """How long this process has run (interpreter start-up and imports, when asked at a job's
    start); from /proc, so on Linux only."""
    try:
        with open("/proc/self/stat") as stat:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _size(paths) -> int:
    total = 0
    for path in paths:
        path = Path(path)
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


class JobTelemetry:
    """Context manager around one job; set `records_in`, `records_out` and `details` inside it."""

    def __init__(self, path, stage: str, sample: str, part: str | None = None, shard: str | None = None, inputs=(),
                 outputs=(), threads: int = 1, resources: dict | None = None):
        self.path = Path(path)
        self.stage, self.sample, self.part, self.shard = stage, sample, part, shard
        self.unit = shard or part or "all"
        self.inputs, self.outputs = [os.fspath(p) for p in inputs], [os.fspath(p) for p in outputs]
        self.threads, self.resources = threads, resources or {}
        self.records_in: int | None = None
        self.records_out: int | None = None
        self.details: dict = {}
        self.gpu: dict | None = None

    @classmethod
    def from_snakemake(cls, snakemake, stage: str) -> JobTelemetry:
        """Build from the `snakemake` object of a rule script; configures logging to its log file."""
        configure_logging(snakemake.log.get("log"))
        wildcards = dict(snakemake.wildcards.items())
        resources = {name: value for name, value in snakemake.resources.items()
                     if not name.startswith("_") and isinstance(value, (int, float, str))}
        return cls(snakemake.log.telemetry, stage, wildcards.get("sample", "all"), wildcards.get("part"),
                   wildcards.get("shard"), inputs=list(snakemake.input), outputs=list(snakemake.output),
                   threads=snakemake.threads, resources=resources)

    def __enter__(self) -> JobTelemetry:
        self._startup_seconds = _seconds_since_process_start()
        self._start_wall = time.time()
        self.start_perf = time.perf_counter()
        self._start_cpu = _cpu_seconds()
        log.info("%s %s.%s started on %s", self.stage, self.sample, self.unit, socket.gethostname())
        return self

    def __exit__(self, error_type, error, error_traceback) -> bool:
        wall = time.perf_counter() - self.start_perf
        bytes_in, bytes_out = _size(self.inputs), _size(self.outputs) if error is None else 0
        report = {
            "run_id": os.environ.get(RUN_ID_VARIABLE),
            "stage": self.stage, "sample": self.sample, "part": self.part, "shard": self.shard,
            "status": "ok" if error is None else "failed",
            "error": None if error is None else f"{error_type.__name__}: {error}",
            "start": datetime.datetime.fromtimestamp(self._start_wall, datetime.timezone.utc).isoformat(),
            "end": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "start_unix": self._start_wall, "wall_seconds": wall, "startup_seconds": self._startup_seconds,
            "cpu_seconds": _cpu_seconds() - self._start_cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            # the rule's mem_mb: a constant bound that no job's peak should pass, whatever the input
            "memory_bound_mb": self.resources.get("mem_mb"),
            "records_in": self.records_in, "records_out": self.records_out,
            "bytes_in": bytes_in, "bytes_out": bytes_out,
            "records_per_second": self.records_in / wall if self.records_in is not None and wall > 0 else None,
            "bytes_per_second": bytes_in / wall if wall > 0 else None,
            "host": socket.gethostname(), "pid": os.getpid(),
            "threads": self.threads, "resources": self.resources,
            "details": self.details, "gpu": self.gpu,
        }
        if error is not None:
            log.error("%s", "".join(traceback.format_exception(error_type, error, error_traceback)))
        if report["memory_bound_mb"] and report["peak_rss_mb"] > report["memory_bound_mb"]:
            log.warning("peak memory %.0f MB is over the job's bound of %s MB (mem_mb)", report["peak_rss_mb"],
                        report["memory_bound_mb"])
        with atomic_output(self.path) as out:
            out.write(json.dumps(report, indent=2, default=str) + "\n")
        log.info("%s %s.%s %s in %.1f s", self.stage, self.sample, self.unit, report["status"], wall)
        return False


class GpuMonitor:
    """Samples one GPU through NVML in a background thread while a job runs.

    `summary()` gives the device name, mean and peak utilisation, peak memory, mean power, the
    energy used and the samples themselves; it is None when NVML is not available.
    """

    def __init__(self, uuid: str | None, interval: float = 1.0):
        self.interval = interval
        self.samples: list[dict] = []
        self._handle = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as error:  # no NVML library, no driver or no such device: no GPU telemetry
            log.info("NVML not available (%s); no GPU samples", error)

    def _energy_mj(self) -> int | None:
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except Exception:
            return None

    def _sample(self) -> None:
        nvml, handle = self._nvml, self._handle
        utilisation = nvml.nvmlDeviceGetUtilizationRates(handle)
        self.samples.append({
            "t": round(time.perf_counter() - self._start, 2),
            "gpu_util": utilisation.gpu,
            "memory_used_mb": nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20,
            "power_w": nvml.nvmlDeviceGetPowerUsage(handle) / 1000,
        })

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> GpuMonitor:
        if self._handle is not None:
            self._start = time.perf_counter()
            self._energy_start = self._energy_mj()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self._handle is not None:
            self._stop.set()
            self._thread.join()
            self._sample()
            self._energy_end = self._energy_mj()
        return False

    def summary(self) -> dict | None:
        if self._handle is None:
            return None
        name = self._nvml.nvmlDeviceGetName(self._handle)
        energy = (self._energy_end - self._energy_start) / 1000 if None not in (self._energy_start, self._energy_end) else None
        utilisation = [s["gpu_util"] for s in self.samples]
        return {
            "nvml_device": name.decode() if isinstance(name, bytes) else name,
            "mean_gpu_util": sum(utilisation) / len(utilisation),
            "max_gpu_util": max(utilisation),
            "max_memory_used_mb": max(s["memory_used_mb"] for s in self.samples),
            "mean_power_w": sum(s["power_w"] for s in self.samples) / len(self.samples),
            "energy_j": energy,
            "samples": self.samples,
        }
