"""The shard plan, and stages 3 and 4: each shard's frames tokenized for its embedding model.

Shards are sized by work, not by GPUs. ESM-2 3B takes most of a run's GPU time, and its time
grows with its tokens, so a shard is a run of consecutive frames (rows of the sample's frames
table) of about `shard_tokens` ESM-2 tokens (residues plus <cls> and <eos>).

The shards are planned part by part (a Snakemake checkpoint per part, `plan_shards`), each as soon
as stage 2 has run on its part and the plans of the parts before it are made, so that the GPU
starts on the first shards while later parts are still being chunked and translated:
- the first part (small: see `virnucpro.stages.partition`) makes shards of its own, balanced:
  n = ceil(its tokens / shard_tokens), cut where the running total passes k / n of its tokens;
- a later part takes the frames that no earlier plan has put in a shard, up to its own last frame,
  and cuts a shard after the frame that takes the running total to each multiple of
  `shard_tokens`; what remains is left to the next part's plan;
- the last part cuts what remains into balanced shards, as the first part does.
A shard made by part p's plan is named `<p>-<k>`; it may hold frames of earlier parts. The plan
depends only on the input, the expected length, `part_mb` and `shard_tokens`, so the same run on
1, 2 or 8 GPUs, or under SLURM, makes the same shards; `--resources gpu=N` only limits how many
GPU jobs run at once.

Stages 3 and 4 take a shard's rows of the frames table (nucleotide slices for DNABERT-S, proteins
for ESM-2) and write them as tokens, so that the GPU jobs only pack and embed; these CPU jobs run
while the GPU works on other shards.
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass

import numpy as np

from virnucpro.io.atomic import atomic_output
from virnucpro.io.ids import unit_names
from virnucpro.io.schemas import TOKEN_SCHEMA
from virnucpro.io.tables import PartedTable, TableWriter, string_bytes
from virnucpro.models.tokens import load_tokenizer

TOKEN_BATCH_ROWS = 65536
# Sequences of a model kind, in the frames table.
SEQUENCE_COLUMN = {"dnabert_s": "nucleotide", "esm2": "protein"}


# A shard's name is that of the part whose plan made it and its number there: `<part>-<k>`.
SHARD_OF_PART = "-"


def shard_part(name: str) -> str:
    """The part whose plan made the shard `name` (its frames are in that part and those before)."""
    return name.split(SHARD_OF_PART)[0]


@dataclass(frozen=True)
class Shard:
    name: str
    row_start: int  # first frame (row of the frames table)
    row_end: int  # one past the last
    protein_tokens: int

    @property
    def frames(self) -> int:
        return self.row_end - self.row_start


def _protein_token_counts(frames: PartedTable, start: int):
    for block in frames.blocks(start, rows=1 << 20):
        offsets, _ = string_bytes(block.column("protein"))
        yield np.diff(offsets) + 2


def _cuts(frames: PartedTable, start: int, thresholds: list[int]) -> tuple[list[tuple[int, int]], int]:
    """From row `start` to the table's end: (row, tokens before it) after the first frame that takes
    the running total of tokens to each threshold, and the total. Shards smaller than a frame would
    be empty: cuts that coincide are made once."""
    cuts: list[tuple[int, int]] = []
    row, running, target = start, 0, 0
    for counts in _protein_token_counts(frames, start):
        cumulative = running + np.cumsum(counts)
        while target < len(thresholds):
            cut = int(np.searchsorted(cumulative, thresholds[target]))
            if cut == len(counts):
                break
            target += 1
            if row + cut + 1 > (cuts[-1][0] if cuts else start):
                cuts.append((row + cut + 1, int(cumulative[cut])))
        row, running = row + len(counts), running + int(counts.sum())
    return cuts, running


def plan_shards(frame_paths: list[str | os.PathLike], part: str, earlier_shards: list[Shard], last: bool,
                shard_tokens: int) -> list[Shard]:
    """The shards that part `part`'s plan makes (see the module's description): `frame_paths` are
    the frames tables of the sample's parts up to this one, in order, `earlier_shards` the shards
    that the earlier parts' plans made, and `last` says whether this is the sample's last part."""
    frames = PartedTable(frame_paths, columns=["protein"])
    start = max((shard.row_end for shard in earlier_shards), default=0)
    _, total = _cuts(frames, start, [])
    if len(frame_paths) == 1 or last:  # balanced
        count = -(-total // shard_tokens)
        cuts, _ = _cuts(frames, start, [-(-total * k // count) for k in range(1, count)])
        if frames.num_rows > (cuts[-1][0] if cuts else start):
            cuts.append((frames.num_rows, total))
    else:  # a shard at each multiple of shard_tokens, the rest left to the next part
        cuts, _ = _cuts(frames, start, [shard_tokens * k for k in range(1, total // shard_tokens + 1)])
    bounds = [(start, 0), *cuts]
    names = [f"{part}{SHARD_OF_PART}{k}" for k in unit_names(len(cuts))]
    return [Shard(name, row_start, row_end, end_tokens - start_tokens)
            for name, (row_start, start_tokens), (row_end, end_tokens) in zip(names, bounds[:-1], bounds[1:])]


def write_shard_plan(path: str | os.PathLike, shards: list[Shard]) -> None:
    with atomic_output(path) as out:
        writer = csv.writer(out, delimiter="\t", lineterminator="\n")
        writer.writerow(["shard", "row_start", "row_end", "frames", "protein_tokens"])
        for shard in shards:
            writer.writerow([shard.name, shard.row_start, shard.row_end, shard.frames, shard.protein_tokens])


def read_shard_plan(path: str | os.PathLike) -> list[Shard]:
    with open(path, newline="") as handle:
        return [Shard(row["shard"], int(row["row_start"]), int(row["row_end"]), int(row["protein_tokens"]))
                for row in csv.DictReader(handle, delimiter="\t")]


def shard_of(plan_path: str | os.PathLike, name: str) -> Shard:
    for shard in read_shard_plan(plan_path):
        if shard.name == name:
            return shard
    raise ValueError(f"{plan_path}: no shard '{name}'")


def tokenize_shard(kind: str, model_path: str | os.PathLike, frame_paths: list[str | os.PathLike], shard: Shard,
                output_path: str | os.PathLike) -> int:
    """Stage 3 (kind "dnabert_s") or 4 ("esm2"): the shard's sequences as the model's tokens.

    Returns the number of tokens written."""
    tokenizer = load_tokenizer(kind, model_path)
    frames = PartedTable(frame_paths, columns=[SEQUENCE_COLUMN[kind]])
    tokens = 0
    with TableWriter(output_path, TOKEN_SCHEMA, TOKEN_BATCH_ROWS, metadata={
            "kind": kind, "tokenizer": tokenizer.identity, "shard": asdict(shard)}) as out:
        for block in frames.blocks(shard.row_start, shard.row_end, rows=TOKEN_BATCH_ROWS):
            encoded = tokenizer.encode(block.column(0).combine_chunks())
            out.write_columns({"tokens": encoded})
            tokens += len(encoded.values)
    return tokens
