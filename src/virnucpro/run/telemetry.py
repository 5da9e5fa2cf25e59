"""Per-job telemetry: what each rule did, how long it took and what it used.

Every rule script runs inside `JobTelemetry`, which writes `results/telemetry/<stage>/<sample>.<unit>.json`
(the unit is the job's part of the input, its shard, or `all`)
when the job ends, also when it fails (with the error). Snakemake treats the file as a log, so it
keeps it after a failure instead of deleting it with the job's outputs. Each file names the run
(the Snakemake invocation) the job ran in, from RUN_ID_VARIABLE, which the workflow sets once per
invocation and hands to every job, so that the report can tell this run's jobs from those of
earlier runs whose outputs are reused.

GPU jobs add NVML samples over the job (utilisation, memory, power) and the energy used, through
nvidia-ml-py; without a GPU or NVML that part is simply absent, and a metric that NVML does not give
for a device (MIG instances have no utilisation or power) is recorded as unavailable, with why.
Telemetry never fails a job: a job that did its work succeeds even if its telemetry cannot be had.

`warnings` holds what a job warned about (e.g. an embedding job that runs on the CPU although it
seems to have a GPU); each is also logged.

A job that stops on an error the project raises on purpose (`VirnucproError`: bad input, config or
model) or on a full disk ends with exit status 1 and no traceback: its message goes to the job's log
and to `message` in its telemetry, from where the run prints it last (`virnucpro.run.failures`).
Any other error is a bug and keeps its traceback.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import resource
import shutil
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from virnucpro.io.atomic import atomic_output
from virnucpro.io.errors import VirnucproError
from virnucpro.run.resume import process_start_ticks

log = logging.getLogger(__name__)

RUN_ID_VARIABLE = "VIRNUCPRO_RUN_ID"


def new_run_id() -> str:
    """A run's identifier: the time it started, in UTC."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def configure_logging(log_path: str | os.PathLike | None) -> None:
    """Log to the rule's log file (and stderr), with timestamps."""
    terminal = logging.StreamHandler(sys.stderr)
    # a message the run prints last (see `JobTelemetry`) is not printed here too
    terminal.addFilter(lambda record: not getattr(record, "shown_last", False))
    handlers: list[logging.Handler] = [terminal]
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
    ticks = process_start_ticks()
    try:
        return None if ticks is None else time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
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
        self.warnings: list[str] = []
        self.message: str | None = None  # see `user_message`

    @classmethod
    def from_snakemake(cls, snakemake) -> JobTelemetry:
        """Build from the `snakemake` object of a rule script (the stage is its rule); configures
        logging to its log file."""
        configure_logging(snakemake.log.get("log"))
        wildcards = dict(snakemake.wildcards.items())
        resources = {name: value for name, value in snakemake.resources.items()
                     if not name.startswith("_") and isinstance(value, (int, float, str))}
        # a model check is named for its purpose (predict_300), as its telemetry file
        owner = wildcards.get("sample", wildcards.get("purpose", "all"))
        return cls(snakemake.log.telemetry, snakemake.rule, owner, wildcards.get("part"),
                   wildcards.get("shard"), inputs=list(snakemake.input), outputs=list(snakemake.output),
                   threads=snakemake.threads, resources=resources)

    def warn(self, message: str) -> None:
        """Log a warning and record it in the job's telemetry."""
        log.warning("%s", message)
        self.warnings.append(message)

    def __enter__(self) -> JobTelemetry:
        self._startup_seconds = _seconds_since_process_start()
        self._start_wall = time.time()
        self.start_perf = time.perf_counter()
        self._start_cpu = _cpu_seconds()
        log.info("%s %s.%s started on %s", self.stage, self.sample, self.unit, socket.gethostname())
        return self

    def __exit__(self, error_type, error, error_traceback) -> bool:
        wall = time.perf_counter() - self.start_perf
        self.message = self.user_message(error)
        if self.message is not None:
            log.error("%s", self.message, extra={"shown_last": True})
        elif error is not None:
            log.error("%s", "".join(traceback.format_exception(error_type, error, error_traceback)))
        try:
            self._write(wall, error_type, error)
        except Exception:  # the job's own outcome stands
            log.exception("%s %s.%s: its telemetry could not be written", self.stage, self.sample, self.unit)
        log.info("%s %s.%s %s in %.1f s", self.stage, self.sample, self.unit,
                 "ok" if error is None else "failed", wall)
        if self.message is not None:
            raise SystemExit(1)  # no traceback: the message says it all
        return False

    def user_message(self, error: BaseException | None) -> str | None:
        """What to tell the user of an error the project raises on purpose or of a full disk; None
        for a bug (or no error)."""
        if isinstance(error, VirnucproError):
            return str(error)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            folder = Path(os.path.commonpath([os.path.abspath(p) for p in self.outputs] or [os.getcwd()]))
            while not folder.is_dir():
                folder = folder.parent
            free = shutil.disk_usage(folder).free
            return (f"{folder}: no space left on device ({free / 2**20:,.0f} MB free): this {self.stage} job reads "
                    f"{_size(self.inputs) / 2**20:,.1f} MB and needs about as much again or more for its outputs "
                    "(README, Scale: disk per read); free space there or run where there is more")
        return None

    def _write(self, wall: float, error_type, error) -> None:
        bytes_in, bytes_out = _size(self.inputs), _size(self.outputs) if error is None else 0
        report = {
            "run_id": os.environ.get(RUN_ID_VARIABLE),
            "stage": self.stage, "sample": self.sample, "part": self.part, "shard": self.shard,
            "status": "ok" if error is None else "failed",
            "error": None if error is None else f"{error_type.__name__}: {error}",
            "message": self.message,  # shown to the user last, for an error raised on purpose
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
            "details": self.details, "gpu": self.gpu, "warnings": self.warnings,
        }
        if report["memory_bound_mb"] and report["peak_rss_mb"] > report["memory_bound_mb"]:
            # report["warnings"] is this list: the warning goes into the telemetry too
            self.warn(f"peak memory {report['peak_rss_mb']:.0f} MB is over the job's bound of "
                      f"{report['memory_bound_mb']} MB (mem_mb)")
        with atomic_output(self.path) as out:
            out.write(json.dumps(report, indent=2, default=str) + "\n")


class GpuMonitor:
    """Samples one GPU through NVML in a background thread while a job runs.

    `summary()` gives the device name, mean and peak utilisation, peak memory, mean power, the
    energy used, the samples themselves and `unavailable`: "<metric>: <error>" for each metric NVML
    could not give for this device (a MIG instance has no utilisation, power or energy). It is None when
    NVML is not available at all. No NVML error reaches the job.
    """

    def __init__(self, uuid: str | None, interval: float = 1.0):
        self.interval = interval
        self.samples: list[dict] = []
        self.unavailable: dict[str, str] = {}
        self._handle = None
        self._name = None
        self._energy_start = self._energy_end = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as error:  # no NVML library or no driver: no GPU telemetry
            log.info("NVML not available (%s); no GPU samples", error)
            return
        self._nvml = pynvml
        try:
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as error:  # no such device
            log.info("NVML has no device %s (%s); no GPU samples", uuid or 0, error)
            self._shutdown()

    def _query(self, metric: str, read):
        """`read()`, or None when NVML cannot give `metric` (noted in `unavailable`)."""
        try:
            return read()
        except Exception as error:
            self.unavailable.setdefault(metric, f"{type(error).__name__}: {error}")
            return None

    def _sample(self) -> None:
        nvml, handle = self._nvml, self._handle
        self.samples.append({
            "t": round(time.perf_counter() - self._start, 2),
            "gpu_util": self._query("gpu_util", lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            "memory_used_mb": self._query("memory_used_mb", lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20),
            "power_w": self._query("power_w", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000),
        })

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _shutdown(self) -> None:
        self._handle = None
        try:
            self._nvml.nvmlShutdown()
        except Exception as error:
            log.info("NVML shutdown failed (%s)", error)

    def __enter__(self) -> GpuMonitor:
        if self._handle is not None:
            self._start = time.perf_counter()
            name = self._query("name", lambda: self._nvml.nvmlDeviceGetName(self._handle))
            self._name = name.decode() if isinstance(name, bytes) else name
            self._energy_start = self._query("energy_j", lambda: self._nvml.nvmlDeviceGetTotalEnergyConsumption(
                self._handle))
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self._handle is not None:
            self._stop.set()
            self._thread.join()
            self._sample()
            if self._energy_start is not None:
                self._energy_end = self._query("energy_j", lambda: self._nvml.nvmlDeviceGetTotalEnergyConsumption(
                    self._handle))
            self._shutdown()
        return False

    def summary(self) -> dict | None:
        if not self.samples:
            return None

        def known(metric: str) -> list[float]:
            return [s[metric] for s in self.samples if s[metric] is not None]

        utilisation, memory, power = known("gpu_util"), known("memory_used_mb"), known("power_w")
        energy = (self._energy_end - self._energy_start) / 1000 if None not in (self._energy_start,
                                                                                self._energy_end) else None
        return {
            "nvml_device": self._name,
            "mean_gpu_util": sum(utilisation) / len(utilisation) if utilisation else None,
            "max_gpu_util": max(utilisation, default=None),
            "max_memory_used_mb": max(memory, default=None),
            "mean_power_w": sum(power) / len(power) if power else None,
            "energy_j": energy,
            "unavailable": [f"{metric}: {why}" for metric, why in sorted(self.unavailable.items())],
            "samples": self.samples,
        }
