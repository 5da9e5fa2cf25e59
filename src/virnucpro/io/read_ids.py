"""Duplicate read IDs over a whole sample, found in bounded memory.

Read IDs must be unique: VirNucPro's outputs name chunks and frames by them. A set of 100 million
IDs would not fit a job's memory budget, so each stage-1 job writes the 64-bit hashes of its
part's IDs, sorted, with their read indices (a sorted run), and `find_duplicate_ids` merges the
runs in sorted order, a block at a time, looking for equal neighbours. More than `MERGE_WIDTH`
runs are first merged in groups into longer runs, so memory and open files stay bounded whatever
the number of parts. Equal hashes are confirmed by comparing the IDs themselves, so a hash
collision never refuses a valid input.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from virnucpro.io.tables import TableReader, TableWriter

HASH_SCHEMA = pa.schema([("hash", pa.uint64()), ("read_index", pa.int64())])
RUN_BATCH_ROWS = 16384
MERGE_WIDTH = 64


def id_hashes(ids: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash of each ID (BLAKE2b, the same on every machine and Python)."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids),
                       dtype=np.uint64, count=len(ids))


def write_id_hashes(path: str | os.PathLike, hashes: np.ndarray, first_read_index: int) -> None:
    """The sorted run of one part: its hashes in order, each with its read's index."""
    order = np.argsort(hashes, kind="stable")
    with TableWriter(path, HASH_SCHEMA, RUN_BATCH_ROWS) as run:
        run.write_columns({"hash": hashes[order], "read_index": first_read_index + order})


def _blocks(path: str | os.PathLike) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for batch in TableReader(path).batches():
        yield batch.column(0).to_numpy(), batch.column(1).to_numpy()


def _merged(paths: Sequence[str | os.PathLike]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The runs' (hash, read index) pairs in hash order, block by block. A block ends at the
    smallest last hash held from any run, so a hash never continues into the next block."""
    sources = [_blocks(path) for path in paths]
    held = [next(source, None) for source in sources]
    while any(block is not None for block in held):
        bound = min(block[0][-1] for block in held if block is not None)
        hashes, indices = [], []
        for k, block in enumerate(held):
            if block is None:
                continue
            cut = int(np.searchsorted(block[0], bound, side="right"))
            hashes.append(block[0][:cut])
            indices.append(block[1][:cut])
            held[k] = (block[0][cut:], block[1][cut:]) if cut < len(block[0]) else next(sources[k], None)
        hashes, indices = np.concatenate(hashes), np.concatenate(indices)
        order = np.lexsort((indices, hashes))
        yield hashes[order], indices[order]


def find_duplicate_ids(run_paths: Sequence[str | os.PathLike], id_of: Callable[[int], str],
                       scratch: str | os.PathLike) -> tuple[str, int, int] | None:
    """The first duplicated ID in hash order and the two read indices that carry it, or None.

    `id_of(read_index)` gives a read's ID (to confirm equal hashes); `scratch` is a directory for
    the intermediate runs of a merge in several passes (`files.scratch_directory`).
    """
    runs, generation = list(run_paths), 0
    while len(runs) > MERGE_WIDTH:
        merged_runs = []
        for group in range(0, len(runs), MERGE_WIDTH):
            path = os.path.join(scratch, f"{generation}.{group}.arrow")
            with TableWriter(path, HASH_SCHEMA, RUN_BATCH_ROWS) as run:
                for hashes, indices in _merged(runs[group : group + MERGE_WIDTH]):
                    run.write_columns({"hash": hashes, "read_index": indices})
            merged_runs.append(path)
        runs, generation = merged_runs, generation + 1
    for hashes, indices in _merged(runs):
        group_starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
        group_sizes = np.diff(np.r_[group_starts, len(hashes)])
        for start, size in zip(group_starts[group_sizes > 1], group_sizes[group_sizes > 1]):
            first_with_id: dict[str, int] = {}
            for read_index in indices[start : start + size].tolist():
                read_id = id_of(read_index)
                if read_id in first_with_id:
                    return read_id, first_with_id[read_id], read_index
                first_with_id[read_id] = read_index
    return None


def check_unique_ids(source: str | os.PathLike, read_paths: Sequence[str | os.PathLike],
                     run_paths: Sequence[str | os.PathLike], scratch: str | os.PathLike) -> int:
    """The number of reads, or InputError naming the duplicated ID and its two records, if the
    sample has one."""
    from virnucpro.io.sequences import InputError
    from virnucpro.io.tables import PartedTable

    reads = PartedTable(read_paths, columns=["read_id"])
    duplicate = find_duplicate_ids(run_paths, lambda index: reads.read(index, index + 1).column(0)[0].as_py(), scratch)
    if duplicate is not None:
        read_id, first, second = duplicate
        raise InputError(source, f"duplicate sequence ID in records {first + 1} and {second + 1} (IDs must be unique)",
                         record=read_id)
    return reads.num_rows
