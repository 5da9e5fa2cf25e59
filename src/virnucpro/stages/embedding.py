"""Stages 5 and 6: embed one shard's tokens with DNABERT-S or ESM-2, streaming the embeddings out.

One model load per job. The shard's token file (stages 3 and 4) is read a record batch at a time;
a background thread packs consecutive sequences end to end, with no padding, into batches of at
most `token_budget` tokens in pinned memory while the GPU computes. Each batch's pooled
embeddings are copied to the host asynchronously and a second thread writes them, in row order,
to the shard's feature file. The job's memory, on the host and on the GPU, is therefore bounded by
the token budget and a few batches in flight, whatever the size of the shard; the host never waits
for the GPU between batches. A batch that runs out of GPU memory is split in two and retried.

The job logs its progress every PROGRESS_SECONDS (sequences and tokens done, rate, time left) and
records each batch's timing (`BatchTimeline`, bounded in size) for the run's report.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from virnucpro.io.features import FeatureWriter
from virnucpro.io.tables import TableReader
from virnucpro.models.embedder import Embedder
from virnucpro.models.packing import PackedSequences
from virnucpro.models.tokens import load_tokenizer

log = logging.getLogger(__name__)


# Largest default batch, in tokens: beyond this the matrix multiplies are no faster.
DEFAULT_TOKEN_BUDGET_CAP = {"dnabert_s": 131072, "esm2": 65536}
CPU_TOKEN_BUDGET = 4096
# Rough activation bytes per token, per unit of model width, at inference in bf16 with a float32
# residual stream (used only to derive a default token budget from free GPU memory).
_ACTIVATION_BYTES_PER_TOKEN_PER_WIDTH = 48
# Batches whose embeddings may wait for the writer: bounds the pinned host memory in use.
_WRITE_QUEUE_BATCHES = 4
# Seconds between two progress lines in the job's log.
PROGRESS_SECONDS = 30.0


def default_token_budget(embedder: Embedder, device: torch.device) -> int:
    """Tokens per batch: as many as half the free GPU memory holds, up to a cap; small on the CPU."""
    if device.type != "cuda":
        return CPU_TOKEN_BUDGET
    free_bytes, _ = torch.cuda.mem_get_info(device)
    per_token = _ACTIVATION_BYTES_PER_TOKEN_PER_WIDTH * embedder.dim
    budget = int(0.5 * free_bytes / per_token) // 1024 * 1024
    return max(1024, min(budget, DEFAULT_TOKEN_BUDGET_CAP[embedder.kind]))


class BatchTimeline:
    """Each batch's end time, sequences, tokens and device seconds, in at most `max_entries`
    entries: when they are all used, neighbours merge pairwise and each entry from then on holds
    twice as many batches, so that a job of any length keeps a timeline of even resolution."""

    FIELDS = ("end_unix", "batches", "sequences", "tokens", "padding_tokens", "compute_seconds")

    def __init__(self, max_entries: int = 256):
        if max_entries < 2 or max_entries % 2:
            raise ValueError(f"a batch timeline needs an even number of entries, got {max_entries}")
        self.max_entries = max_entries
        self.batches_per_entry = 1
        self.entries: list[list] = []

    def add(self, end_unix: float, sequences: int, tokens: int, padding_tokens: int, compute_seconds: float) -> None:
        if self.entries and self.entries[-1][1] < self.batches_per_entry:
            last = self.entries[-1]
            last[0] = end_unix
            for index, value in enumerate((1, sequences, tokens, padding_tokens, compute_seconds), start=1):
                last[index] += value
            return
        if len(self.entries) == self.max_entries:
            self.entries = [[second[0], *(a + b for a, b in zip(first[1:], second[1:]))]
                            for first, second in zip(self.entries[::2], self.entries[1::2])]
            self.batches_per_entry *= 2
        self.entries.append([end_unix, 1, sequences, tokens, padding_tokens, compute_seconds])

    def as_dict(self) -> dict[str, list]:
        return {name: [entry[index] for entry in self.entries] for index, name in enumerate(self.FIELDS)}


class _Progress:
    """Logs sequences and tokens done, the rate and the time left, every `interval` seconds."""

    def __init__(self, kind: str, total_sequences: int | None, interval: float):
        self.kind, self.total, self.interval = kind, total_sequences, interval
        self.started = self.logged = time.perf_counter()

    def update(self, sequences: int, tokens: int) -> None:
        now = time.perf_counter()
        if now - self.logged < self.interval:
            return
        self.logged, elapsed = now, max(now - self.started, 1e-9)
        done = f"{sequences:,}" + (f" of {self.total:,} sequences ({sequences / self.total:.1%})" if self.total else
                                   " sequences")
        left = ""
        if self.total and sequences:
            left = f", about {_duration((self.total - sequences) * elapsed / sequences)} left"
        log.info("%s: %s, %s tokens in %s, %s tokens/s, %s sequences/s%s", self.kind, done, f"{tokens:,}",
                 _duration(elapsed), f"{tokens / elapsed:,.0f}", f"{sequences / elapsed:,.0f}", left)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


@dataclass
class EmbeddingStats:
    sequences: int = 0
    tokens: int = 0  # real tokens, [CLS]/[SEP] or BOS/EOS included
    padding_tokens: int = 0  # tokens of the dummy sequences that round batches up
    batches: int = 0
    token_budget: int = 0
    oom_splits: int = 0
    wait_seconds: float = 0.0  # host waiting for the next packed batch
    compute_seconds: float = 0.0  # device time of the forward passes
    peak_allocated_bytes: int = 0
    first_output_at: float | None = None  # perf_counter() when the first batch's embeddings reached the host
    batch_fill_sum: float = 0.0  # real tokens / budget, summed over batches
    timeline: BatchTimeline = field(default_factory=BatchTimeline)

    def add_batch(self, sequences: int, packed: PackedSequences) -> None:
        real_tokens = packed.num_tokens - packed.padding_tokens
        self.batches += 1
        self.sequences += sequences
        self.tokens += real_tokens
        self.padding_tokens += packed.padding_tokens
        self.batch_fill_sum += min(1.0, real_tokens / self.token_budget)

    def as_dict(self) -> dict:
        packing = self.batch_fill_sum / self.batches if self.batches else None
        return {
            "sequences": self.sequences, "tokens": self.tokens, "padding_tokens": self.padding_tokens,
            "batches": self.batches, "token_budget": self.token_budget, "oom_splits": self.oom_splits,
            "packing_efficiency": packing,
            "tokens_per_second_compute": self.tokens / self.compute_seconds if self.compute_seconds else None,
            "data_wait_seconds": self.wait_seconds, "compute_seconds": self.compute_seconds,
            "peak_allocated_bytes": self.peak_allocated_bytes, "batch_timeline": self.timeline.as_dict(),
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


def _packed_batches(blocks: Iterable[pa.ListArray], pad_id: int, token_budget: int,
                    pin: bool) -> Iterator[tuple[int, int, PackedSequences]]:
    """(first row, sequences, packed batch) over consecutive rows of the token blocks.

    Rows that do not fill a whole batch wait for the next block, so that every batch but the last
    is as full as the budget allows.
    """
    row = 0
    lengths, tokens = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.uint16)
    for block in itertools.chain(blocks, [None]):
        if block is not None:
            block = block.combine_chunks() if isinstance(block, pa.ChunkedArray) else block
            offsets = block.offsets.to_numpy()
            lengths = np.concatenate((lengths, np.diff(offsets)))
            tokens = np.concatenate((tokens, block.values.to_numpy()[offsets[0] : offsets[-1]]))
        batches = plan_batches(lengths, token_budget)
        if block is not None:
            batches = batches[:-1]  # keep the partial batch for the next block
        starts = np.r_[0, np.cumsum(lengths)]
        for batch in batches:
            packed = PackedSequences.from_flat(tokens[starts[batch[0]] : starts[batch[-1] + 1]], lengths[batch], pad_id)
            yield row, len(batch), packed.pin_memory() if pin else packed
            row += len(batch)
        used = int(batches[-1][-1]) + 1 if batches else 0
        lengths, tokens = lengths[used:], tokens[starts[used] :]


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


class _Writer:
    """Hands each batch's embeddings to `write(first_row, vectors)` in a background thread, in
    order, once the device has finished copying them to the host."""

    def __init__(self, write: Callable[[int, np.ndarray], None]):
        self._queue: queue.Queue = queue.Queue(maxsize=_WRITE_QUEUE_BATCHES)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, args=(write,), daemon=True)
        self._thread.start()

    def _drain(self, write) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                first_row, vectors, copied = item
                try:
                    if copied is not None:
                        copied.synchronize()
                    write(first_row, vectors.numpy())
                except BaseException as error:  # handed to the producer, which re-raises it
                    self._error = error

    def submit(self, first_row: int, vectors: torch.Tensor, copied: torch.cuda.Event | None) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((first_row, vectors, copied))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _event(cuda: bool):
    """Now, on the device's stream (a recorded CUDA event) or on the host clock."""
    if not cuda:
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


class _DeviceTimer:
    """Each batch's device time, read once the device has passed it (never waiting on the GPU
    between batches), placed in wall-clock time from a reference taken when the timer starts."""

    def __init__(self, cuda: bool, stats: EmbeddingStats):
        self.cuda, self.stats = cuda, stats
        self.in_flight: collections.deque = collections.deque()  # (start, end, sequences, tokens, padding)
        self.reference = (_event(cuda), time.time())

    def start(self):
        return _event(self.cuda)

    def end(self, started, sequences: int, tokens: int, padding: int) -> None:
        self.in_flight.append((started, _event(self.cuda), sequences, tokens, padding))
        self.account(wait=False)

    def account(self, wait: bool) -> None:
        """Record the batches the device has finished (all of them, waiting, with `wait`)."""
        reference_event, reference_unix = self.reference
        while self.in_flight and (wait or not self.cuda or self.in_flight[0][1].query()):
            started, ended, sequences, tokens, padding = self.in_flight.popleft()
            if self.cuda:
                ended.synchronize()
                seconds = started.elapsed_time(ended) / 1000
                end_unix = reference_unix + reference_event.elapsed_time(ended) / 1000
            else:
                seconds, end_unix = ended - started, reference_unix + ended - reference_event
            self.stats.compute_seconds += seconds
            self.stats.timeline.add(end_unix, sequences, tokens, padding, seconds)


class _SplitOnOutOfMemory:
    """Runs the model on a packed batch; a batch that runs out of GPU memory is split in two and
    retried, and later batches above half its size are split before they are tried."""

    def __init__(self, model: torch.nn.Module, stats: EmbeddingStats):
        self.model, self.stats = model, stats
        self.safe_tokens: int | None = None

    def __call__(self, packed: PackedSequences) -> torch.Tensor:
        if self.safe_tokens is None or packed.num_tokens <= self.safe_tokens or packed.num_sequences == 1:
            try:
                return self.model.embed(packed)
            except torch.OutOfMemoryError:
                if packed.num_sequences == 1:
                    raise
                torch.cuda.empty_cache()
                self.stats.oom_splits += 1
                self.safe_tokens = packed.num_tokens // 2
                log.warning("batch of %d tokens ran out of GPU memory; splitting it", packed.num_tokens)
        first, second = packed.split()
        return torch.cat((self(first), self(second)))


def _to_host(pooled: torch.Tensor, cuda: bool) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A batch's embeddings on their way to the host, and the event that says they have arrived."""
    if not cuda:
        return pooled, None
    host = torch.empty(pooled.shape, dtype=pooled.dtype, pin_memory=True)
    host.copy_(pooled, non_blocking=True)
    return host, _event(cuda)


def embed_token_blocks(embedder: Embedder, blocks: Iterable[pa.ListArray], device: torch.device,
                       write: Callable[[int, np.ndarray], None], token_budget: int | None = None,
                       total_sequences: int | None = None, progress_seconds: float = PROGRESS_SECONDS) -> EmbeddingStats:
    """Embed the sequences of `blocks` (token lists, in row order); `write(first_row, vectors)`
    receives every batch's float32 embeddings [n, dim], in row order, rows counted from 0.

    Progress is logged every `progress_seconds`, with the time left when `total_sequences` is known."""
    stats = EmbeddingStats(token_budget=token_budget or default_token_budget(embedder, device))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    progress = _Progress(embedder.kind, total_sequences, progress_seconds)
    timer, run = _DeviceTimer(cuda, stats), _SplitOnOutOfMemory(embedder.model, stats)

    def write_and_note_the_first(first_row: int, vectors: np.ndarray) -> None:
        write(first_row, vectors)
        if stats.first_output_at is None:
            stats.first_output_at = time.perf_counter()

    writer = _Writer(write_and_note_the_first)
    batches = _Prefetcher(_packed_batches(blocks, embedder.pad_id, stats.token_budget, pin=cuda))
    try:
        with torch.inference_mode():
            waited = time.perf_counter()
            for first_row, count, packed in batches:
                stats.wait_seconds += time.perf_counter() - waited
                stats.add_batch(count, packed)
                started = timer.start()
                pooled = run(packed.to(device, non_blocking=cuda))[:count]
                timer.end(started, count, packed.num_tokens - packed.padding_tokens, packed.padding_tokens)
                writer.submit(first_row, *_to_host(pooled, cuda))
                progress.update(stats.sequences, stats.tokens)
                waited = time.perf_counter()
    finally:
        writer.close()
    timer.account(wait=True)
    if cuda:
        stats.peak_allocated_bytes = torch.cuda.max_memory_allocated(device)
    return stats


def embed_sequences(embedder: Embedder, sequences: list[str], device: torch.device,
                    token_budget: int | None = None) -> tuple[np.ndarray, EmbeddingStats]:
    """Embeddings [len(sequences), dim] float32 of a list of sequences held in memory."""
    tokens = load_tokenizer(embedder.kind, embedder.source).encode(pa.array(sequences, pa.string()))
    output = np.empty((len(sequences), embedder.dim), dtype=np.float32)

    def write(first_row: int, vectors: np.ndarray) -> None:
        output[first_row : first_row + len(vectors)] = vectors

    stats = embed_token_blocks(embedder, [tokens], device, write, token_budget, len(sequences))
    return output, stats


def embed_shard(embedder: Embedder, tokens_path: str | os.PathLike, output_path: str | os.PathLike,
                device: torch.device, token_budget: int | None = None) -> EmbeddingStats:
    """Embed a shard's token file (stage 3 or 4) into its feature file."""
    tokens = TableReader(tokens_path)
    if (tokens.metadata("kind"), tokens.metadata("tokenizer")) != (embedder.kind, embedder.tokenizer):
        raise ValueError(f"{tokens_path}: tokens made by {tokens.metadata('tokenizer')} for "
                         f"{tokens.metadata('kind')}, not for this {embedder.kind} ({embedder.tokenizer})")
    shard = tokens.metadata("shard")
    with FeatureWriter(output_path, embedder.dim, [embedder.identity()], shard["row_start"], shard["row_end"]) as out:
        stats = embed_token_blocks(embedder, (batch.column(0) for batch in tokens.batches()), device,
                                   lambda first, vectors: out.write_vectors(shard["row_start"] + first, vectors),
                                   token_budget, tokens.num_rows)
    return stats
