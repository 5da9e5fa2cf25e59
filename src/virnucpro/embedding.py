"""Stages 5 and 6: embed the sequences of one shard with DNABERT-S or ESM-2.

One model load per job. Identical sequences are embedded once. The unique sequences are sorted by
length, longest first (so that a batch too large for the GPU shows up at once), and packed into
batches of at most `token_budget` tokens with no padding. A background thread tokenizes and packs
the next batches into pinned memory while the GPU computes; host-to-device copies are
asynchronous and the pooled embeddings stay on the device until the end, so the host never waits
for the GPU between batches. A batch that runs out of GPU memory is split in two and retried.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from virnucpro.features import FeatureTable, write_features
from virnucpro.models.packing import PackedSequences
from virnucpro.sequence_io import read_fasta_simple

log = logging.getLogger(__name__)

MODEL_KINDS = ("dnabert_s", "esm2")

# Largest default batch, in tokens: beyond this the matrix multiplies are no faster.
DEFAULT_TOKEN_BUDGET_CAP = {"dnabert_s": 131072, "esm2": 65536}
CPU_TOKEN_BUDGET = 4096
# Rough activation bytes per token, per unit of model width, at inference in bf16 with a float32
# residual stream (used only to derive a default token budget from free GPU memory).
_ACTIVATION_BYTES_PER_TOKEN_PER_WIDTH = 48


@dataclass
class Embedder:
    """A loaded embedding model and how to turn sequences into its tokens."""

    kind: str
    model: torch.nn.Module
    tokenize: Callable[[list[str]], list[np.ndarray]]
    pad_id: int
    source: str

    @property
    def dim(self) -> int:
        return self.model.embedding_dim

    def identity(self) -> dict:
        return {"kind": self.kind, "architecture": self.model.config.architecture, "dim": self.dim,
                "fingerprint": self.model.fingerprint, "source": self.source}


def load_embedder(kind: str, path: str | os.PathLike, device: torch.device, compile_model: bool = False) -> Embedder:
    """Load a model for `device`: bf16 weights on a GPU, float32 on the CPU.

    `compile_model` applies torch.compile to the model's layers on a GPU (`compile_layers`).
    """
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if kind == "dnabert_s":
        from virnucpro.models.dnabert_s import load_dnabert_s

        model, tokenizer = load_dnabert_s(path, device, dtype)
        if compile_model and device.type == "cuda":
            model.compile_layers()
        return Embedder(kind, model, tokenizer.encode, tokenizer.pad_id, os.fspath(path))
    if kind == "esm2":
        from virnucpro.models.esm2 import PAD, load_esm2, tokenize

        model = load_esm2(path, device, dtype)
        if compile_model and device.type == "cuda":
            model.compile_layers()
        return Embedder(kind, model, lambda proteins: [tokenize(p) for p in proteins], PAD, os.fspath(path))
    raise ValueError(f"unknown embedding model kind '{kind}', expected one of {MODEL_KINDS}")


def default_token_budget(embedder: Embedder, device: torch.device) -> int:
    """Tokens per batch: as many as half the free GPU memory holds, up to a cap; small on the CPU."""
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    free_bytes, _ = torch.cuda.mem_get_info(device)
    per_token = _ACTIVATION_BYTES_PER_TOKEN_PER_WIDTH * embedder.dim
    budget = int(0.5 * free_bytes / per_token) // 1024 * 1024
    return max(1024, min(budget, DEFAULT_TOKEN_BUDGET_CAP[embedder.kind]))


@dataclass
class EmbeddingStats:
    sequences: int = 0
    unique_sequences: int = 0
    tokens: int = 0  # real tokens of the unique sequences, [CLS]/[SEP] or BOS/EOS included
    padding_tokens: int = 0  # tokens of the dummy sequences that round batches up
    batches: int = 0
    token_budget: int = 0
    oom_splits: int = 0
    wait_seconds: float = 0.0  # host waiting for the next packed batch
    compute_seconds: float = 0.0  # device time of the forward passes
    peak_allocated_bytes: int = 0
    batch_fill: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        packing = float(np.mean(self.batch_fill)) if self.batch_fill else None
        return {
            "sequences": self.sequences, "unique_sequences": self.unique_sequences, "tokens": self.tokens,
            "padding_tokens": self.padding_tokens, "batches": self.batches, "token_budget": self.token_budget,
            "oom_splits": self.oom_splits,
            "packing_efficiency": packing,
            "tokens_per_second_compute": self.tokens / self.compute_seconds if self.compute_seconds else None,
            "data_wait_seconds": self.wait_seconds, "compute_seconds": self.compute_seconds,
            "peak_allocated_bytes": self.peak_allocated_bytes,
        }


def plan_batches(token_counts: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Group consecutive sequences into batches of at most `token_budget` tokens.

    A sequence longer than the budget gets a batch of its own.
    """
    batches, start, total = [], 0, 0
    for index, count in enumerate(token_counts):
        if index > start and total + count > token_budget:
            batches.append(np.arange(start, index))
            start, total = index, 0
        total += int(count)
    if start < len(token_counts):
        batches.append(np.arange(start, len(token_counts)))
    return batches


def _packed_batches(sequences: list[str], tokenize, pad_id: int, token_budget: int, pin: bool,
                    max_window: int = 16384) -> Iterator[tuple[torch.Tensor, PackedSequences]]:
    """Tokenize `sequences` window by window and yield (sequence indices, packed batch).

    Windows start small, so that the GPU gets its first batch soon, and double up to
    `max_window`. Tokenized sequences that do not fill a whole batch wait for the next window, so
    that every batch but the last is as full as the budget allows.
    """
    pending_tokens: list[np.ndarray] = []
    pending_index = 0
    window_start, window = 0, 1024
    while window_start < len(sequences):
        pending_tokens.extend(tokenize(sequences[window_start : window_start + window]))
        window_start += window
        window = min(2 * window, max_window)
        last_window = window_start >= len(sequences)
        counts = np.fromiter((len(t) for t in pending_tokens), dtype=np.int64, count=len(pending_tokens))
        batches = plan_batches(counts, token_budget)
        if not last_window:
            batches = batches[:-1]  # keep the partial batch for the next window
        used = 0
        for batch in batches:
            packed = PackedSequences.from_token_lists([pending_tokens[i] for i in batch], pad_id)
            indices = torch.from_numpy(pending_index + batch)
            yield (indices.pin_memory(), packed.pin_memory()) if pin else (indices, packed)
            used = int(batch[-1]) + 1
        pending_tokens = pending_tokens[used:]
        pending_index += used


class _Prefetcher:
    """Runs a batch iterator in a background thread, a few batches ahead of the consumer."""

    _DONE = object()

    def __init__(self, iterator: Iterator, depth: int = 4):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._fill, args=(iterator,), daemon=True)
        self._thread.start()

    def _fill(self, iterator: Iterator) -> None:
        try:
            for item in iterator:
                self._queue.put(item)
            self._queue.put(self._DONE)
        except BaseException as error:  # handed to the consumer, which re-raises it
            self._queue.put(error)

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def embed_sequences(embedder: Embedder, sequences: list[str], device: torch.device,
                    token_budget: int | None = None) -> tuple[np.ndarray, EmbeddingStats]:
    """Embeddings [len(sequences), dim] float32 of `sequences`, in the given order."""
    stats = EmbeddingStats(sequences=len(sequences))
    first_index: dict[str, int] = {}
    inverse = np.fromiter((first_index.setdefault(s, len(first_index)) for s in sequences), dtype=np.int64,
                          count=len(sequences))
    unique = list(first_index)
    stats.unique_sequences = len(unique)
    if not unique:
        return np.empty((0, embedder.dim), dtype=np.float32), stats
    order = np.argsort([-len(s) for s in unique], kind="stable")
    ordered = [unique[i] for i in order]
    stats.token_budget = token_budget or default_token_budget(embedder, device)
    output = torch.empty((len(unique), embedder.dim), dtype=torch.float32, device=device)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    order_on_device = torch.from_numpy(order).to(device)
    timings = []
    safe_tokens = None  # after an out-of-memory split, batches above this size are split first

    def run(packed: PackedSequences) -> torch.Tensor:
        nonlocal safe_tokens
        if safe_tokens is None or packed.num_tokens <= safe_tokens or packed.num_sequences == 1:
            try:
                return embedder.model.embed(packed)
            except torch.OutOfMemoryError:
                if packed.num_sequences == 1:
                    raise
                torch.cuda.empty_cache()
                stats.oom_splits += 1
                safe_tokens = packed.num_tokens // 2
                log.warning("batch of %d tokens ran out of GPU memory; splitting it", packed.num_tokens)
        first, second = packed.split()
        return torch.cat((run(first), run(second)))

    batches = _Prefetcher(_packed_batches(ordered, embedder.tokenize, embedder.pad_id, stats.token_budget, pin=cuda))
    with torch.inference_mode():
        waited = time.perf_counter()
        for indices, packed in batches:
            stats.wait_seconds += time.perf_counter() - waited
            stats.batches += 1
            real_tokens = packed.num_tokens - packed.padding_tokens
            stats.tokens += real_tokens
            stats.padding_tokens += packed.padding_tokens
            stats.batch_fill.append(min(1.0, real_tokens / stats.token_budget))
            packed = packed.to(device, non_blocking=cuda)
            started = _event(cuda)
            pooled = run(packed)
            output[order_on_device[indices.to(device, non_blocking=cuda)]] = pooled[: len(indices)]
            timings.append((started, _event(cuda)))
            waited = time.perf_counter()
    result = output.cpu().numpy()
    if cuda:
        stats.compute_seconds = sum(start.elapsed_time(end) for start, end in timings) / 1000
        stats.peak_allocated_bytes = torch.cuda.max_memory_allocated(device)
    else:
        stats.compute_seconds = sum(end - start for start, end in timings)
    return result[inverse], stats


def _event(cuda: bool):
    if not cuda:
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def embed_fasta(embedder: Embedder, fasta_path: str | os.PathLike, output_path: str | os.PathLike,
                device: torch.device, token_budget: int | None = None) -> EmbeddingStats:
    """Embed every record of a shard FASTA and write the feature table as Parquet."""
    records = list(read_fasta_simple(fasta_path))
    embeddings, stats = embed_sequences(embedder, [r.sequence for r in records], device, token_budget)
    write_features(output_path, FeatureTable([r.id for r in records], embeddings, [embedder.identity()]))
    return stats


def run_embedding_job(kind: str, model_path, fasta_path, output_path, device_setting: str, lock_dir,
                      token_budget: int | None, compile_model: bool, threads: int, telemetry) -> None:
    """A whole stage-5/6 job: lease a device, load the model once, embed the shard, record telemetry."""
    from virnucpro.devices import lease_device
    from virnucpro.telemetry import GpuMonitor

    with lease_device(device_setting, lock_dir) as lease:
        torch.set_num_threads(threads)
        device = torch.device(lease.device)
        loaded = time.perf_counter()
        embedder = load_embedder(kind, model_path, device, compile_model)
        load_seconds = time.perf_counter() - loaded
        with GpuMonitor(lease.uuid) if device.type == "cuda" else contextlib.nullcontext() as monitor:
            stats = embed_fasta(embedder, fasta_path, output_path, device, token_budget)
        telemetry.records_in = telemetry.records_out = stats.sequences
        telemetry.details = {
            **stats.as_dict(), "model": embedder.identity(), "model_load_seconds": load_seconds,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "leased_gpu": lease.gpu.lock_key if lease.gpu else None,
            "compute_dtype": str(next(embedder.model.parameters()).dtype).removeprefix("torch."),
            "compiled": compile_model and device.type == "cuda",
        }
        telemetry.gpu = monitor.summary() if monitor is not None else None
