"""The shard plan, and stages 3 and 4: each shard's frames tokenized for its embedding model.

Shards are sized by work, not by GPUs. ESM-2 3B takes most of a run's GPU time, and its time
grows with its tokens, so a shard is a run of consecutive frames (rows of the sample's frames
table) of about `shard_tokens` ESM-2 tokens (residues plus <cls> and <eos>). The shards of a sample
are balanced: n = ceil(total / shard_tokens) shards, cut where the running total of tokens passes
k / n of the whole. The plan depends only on the input, the expected length and `shard_tokens`,
so the same run on 1, 2 or 8 GPUs, or under SLURM, makes the same shards; `--resources gpu=N`
only limits how many GPU jobs run at once. The plan is a Snakemake checkpoint: the number of
shards is known once stage 2 has run.

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


@dataclass(frozen=True)
class Shard:
    name: str
    row_start: int  # first frame (row of the frames table)
    row_end: int  # one past the last
    protein_tokens: int

    @property
    def frames(self) -> int:
        return self.row_end - self.row_start


def _protein_token_counts(frames: PartedTable):
    for block in frames.blocks(rows=1 << 20):
        offsets, _ = string_bytes(block.column("protein"))
        yield np.diff(offsets) + 2


def plan_shards(frame_paths: list[str | os.PathLike], shard_tokens: int) -> list[Shard]:
    """Balanced shards of about `shard_tokens` ESM-2 tokens over the frames table's parts."""
    frames = PartedTable(frame_paths, columns=["protein"])
    total = sum(int(counts.sum()) for counts in _protein_token_counts(frames))
    if total == 0:
        return []
    count = -(-total // shard_tokens)
    cuts = [(0, 0)]  # (row, tokens before it) where each shard starts
    row = running = 0
    target = 1  # the k of the next cut, after the first frame that takes the total to k / count
    for counts in _protein_token_counts(frames):
        cumulative = running + np.cumsum(counts)
        while target < count:
            cut = int(np.searchsorted(cumulative, -(-total * target // count)))
            if cut == len(counts):
                break
            target += 1
            if row + cut + 1 > cuts[-1][0]:  # shards smaller than a frame would be empty: skip those cuts
                cuts.append((row + cut + 1, int(cumulative[cut])))
        row, running = row + len(counts), running + int(counts.sum())
    if row > cuts[-1][0]:
        cuts.append((row, total))
    names = unit_names(len(cuts) - 1)
    return [Shard(name, start, end, end_tokens - start_tokens)
            for name, (start, start_tokens), (end, end_tokens) in zip(names, cuts[:-1], cuts[1:])]


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


def split_shard(kind: str, model_path: str | os.PathLike, frame_paths: list[str | os.PathLike], shard: Shard,
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
