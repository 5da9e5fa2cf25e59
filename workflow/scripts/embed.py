# Stages 5 and 6: DNABERT-S or ESM-2 embeddings of one shard, on a leased GPU (or the CPU).
import contextlib
import logging
import os
import sys
import time

import torch

from virnucpro.model_store.loading import load_embedder
from virnucpro.run.devices import lease_device
from virnucpro.run.telemetry import GpuMonitor, JobTelemetry
from virnucpro.stages.embedding import embed_shard

params = snakemake.params
with JobTelemetry.from_snakemake(snakemake) as telemetry, \
        lease_device(params.device, params.lock_dir) as lease:
    if lease.cpu_fallback:  # logged loudly by the lease; the telemetry keeps it too
        telemetry.warnings.append(lease.cpu_fallback)
    torch.set_num_threads(snakemake.threads)
    device = torch.device(lease.device)
    loaded = time.perf_counter()
    embedder = load_embedder(params.kind, snakemake.input.model, device, params.compile)
    load_seconds = time.perf_counter() - loaded
    monitor = GpuMonitor(lease.uuid) if device.type == "cuda" else None
    samples_start = time.time()  # the NVML samples' times count from here
    with monitor or contextlib.nullcontext():
        stats = embed_shard(embedder, snakemake.input.tokens, snakemake.output.features, device, params.token_budget)
    telemetry.records_in = telemetry.records_out = stats.sequences
    telemetry.details = {
        **stats.as_dict(), "model": embedder.identity(), "model_load_seconds": load_seconds,
        # job start to the first batch's embeddings on the host: lease, model load, first (compiling) batch
        "first_batch_after_seconds": (stats.first_output_at - telemetry.start_perf
                                      if stats.first_output_at is not None else None),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "leased_gpu": lease.gpu.lock_key if lease.gpu else None,
        "compute_dtype": str(next(embedder.model.parameters()).dtype).removeprefix("torch."),
        "compiled": params.compile and device.type == "cuda",
        "gpu_samples_start_unix": samples_start if monitor is not None else None,
    }
    telemetry.gpu = monitor.summary() if monitor is not None else None
# Outputs and telemetry are written. Tearing down CUDA and the compiler takes seconds during which
# the next GPU job cannot start: end the process now.
logging.shutdown()
sys.stdout.flush(), sys.stderr.flush()
os._exit(0)
