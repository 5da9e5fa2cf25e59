"""The shard plan (per part, sized by work, balanced, independent of GPUs) and stages 3-4 (tokens per shard)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from conftest import BUILTIN_MODELS
from virnucpro.io.ids import unit_names
from virnucpro.io.tables import PartedTable, TableReader
from virnucpro.models.tokens import load_tokenizer
from virnucpro.stages.sharding import (Shard, plan_shards, read_shard_plan, shard_of, shard_part, tokenize_shard,
                                      write_shard_plan)

MODELS = {"dnabert_s": BUILTIN_MODELS / "dnabert_s_mini", "esm2": BUILTIN_MODELS / "esm2_mini.pt"}


@pytest.fixture(scope="module")
def lambda_reads(data_dir, tmp_path_factory):
    """The shared reads, three times over as plain FASTA, in four parts that none is empty: parts
    follow the file's size as stored, here in batches of 64 records."""
    from conftest import PreparedSample
    from virnucpro.io.sequences import read_sequences
    from virnucpro.stages import partition

    directory = tmp_path_factory.mktemp("sharding")
    with open(directory / "reads.fa", "w") as out:
        for copy in range(3):
            out.writelines(f">{record.id}_{copy}\n{record.sequence}\n"
                           for record in read_sequences(data_dir / "reads_1.fq.gz"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(partition, "INPUT_BATCH_ROWS", 8 * 64)
        prepared = PreparedSample(directory, directory / "reads.fa", 300, parts=4)
    assert all(TableReader(path).num_rows for path in prepared.frames)
    return prepared


def protein_tokens(prepared) -> np.ndarray:
    frames = PartedTable(prepared.frames, columns=["protein"])
    return np.array([len(p) + 2 for p in frames.read(0, frames.num_rows).column(0).to_pylist()])


def test_unit_names_sort_in_order():
    assert unit_names(3) == ["000", "001", "002"]
    names = unit_names(1234)
    assert names[0] == "0000" and names == sorted(names) and len(set(names)) == 1234


def sample_plan(prepared, shard_tokens: int) -> list[Shard]:
    """The shards of a prepared sample, planned part by part as the workflow plans them."""
    parts, shards = unit_names(len(prepared.frames)), []
    for index, part in enumerate(parts):
        shards += plan_shards(prepared.frames[: index + 1], part, shards, part == parts[-1], shard_tokens)
    return shards


@pytest.mark.parametrize("shard_tokens", [60, 500, 20_000, 300_000, 10**9])
def test_shards_cover_every_frame_once_and_are_sized_by_work(lambda_reads, shard_tokens):
    counts = protein_tokens(lambda_reads)
    shards = sample_plan(lambda_reads, shard_tokens)
    assert shards[0].row_start == 0 and shards[-1].row_end == len(counts)
    assert all(a.row_end == b.row_start for a, b in zip(shards, shards[1:]))
    assert all(shard.frames > 0 for shard in shards)
    assert [s.protein_tokens for s in shards] == [int(counts[s.row_start : s.row_end].sum()) for s in shards]
    parts = unit_names(len(lambda_reads.frames))
    part_ends = np.cumsum([TableReader(path).num_rows for path in lambda_reads.frames])
    by_part = {part: [s for s in shards if shard_part(s.name) == part] for part in parts}
    for part, made in by_part.items():  # each plan's shards hold frames of its part and the earlier ones only
        assert [s.name for s in made] == [f"{part}-{k}" for k in unit_names(len(made))]
        assert all(s.row_end <= part_ends[parts.index(part)] for s in made)
    # The first part's shards are its own and balanced; so are the last part's; in between, a shard
    # at each multiple of shard_tokens. A frame is never split.
    first, last = by_part[parts[0]], by_part[parts[-1]]
    middle = [s for part in parts[1:-1] for s in by_part[part]]
    first_part_end = part_ends[0]
    assert first[-1].row_end == first_part_end
    assert len(first) == -(-counts[:first_part_end].sum() // shard_tokens) or shard_tokens < 10 * counts.max()
    assert all(abs(s.protein_tokens - shard_tokens) <= counts.max() for s in middle)
    for made in (first, last):
        if len(made) > 1 and shard_tokens >= 20_000:
            sizes = [s.protein_tokens for s in made]
            assert max(sizes) - min(sizes) <= 2 * counts.max()  # balanced, not a full last shard and a remnant
    # as many shards as the work needs: one more than a plan of the whole at most, for the first part's own
    assert len(shards) <= -(-counts.sum() // shard_tokens) + 2


def test_a_parts_plan_needs_only_the_parts_and_plans_before_it(lambda_reads):
    """The first part's shards are planned before later parts exist; a later part takes up what
    the earlier plans left."""
    shards = sample_plan(lambda_reads, 20_000)
    first = plan_shards(lambda_reads.frames[:1], "000", [], False, 20_000)
    assert first == shards[: len(first)] and first[-1].row_end == TableReader(lambda_reads.frames[0]).num_rows
    second = plan_shards(lambda_reads.frames[:2], "001", first, False, 20_000)
    assert second[0].row_start == first[-1].row_end
    assert second and all(abs(s.protein_tokens - 20_000) < 200 for s in second)
    assert second == shards[len(first) : len(first) + len(second)]


def test_no_frames_give_no_shards(tmp_path, prepare):
    (tmp_path / "reads.fa").write_text(">stops\n" + "TTAA" * 50 + "\n>short\nAC\n")
    assert plan_shards(prepare(tmp_path / "reads.fa", 300).frames, "000", [], True, 1000) == []


def test_shard_plan_round_trip(tmp_path):
    shards = [Shard("000-000", 0, 10, 500), Shard("000-001", 10, 25, 498)]
    write_shard_plan(tmp_path / "shards.tsv", shards)
    assert (tmp_path / "shards.tsv").read_text().splitlines()[0] == "shard\trow_start\trow_end\tframes\tprotein_tokens"
    assert read_shard_plan(tmp_path / "shards.tsv") == shards
    assert shard_of(tmp_path / "shards.tsv", "000-001") == shards[1]
    assert shard_part("000-001") == "000"
    with pytest.raises(ValueError, match="no shard '000-002'"):
        shard_of(tmp_path / "shards.tsv", "000-002")


@pytest.mark.parametrize(("kind", "column"), [("dnabert_s", "nucleotide"), ("esm2", "protein")])
def test_split_writes_each_frame_of_the_shard_as_the_models_tokens(lambda_reads, tmp_path, kind, column):
    shard = sample_plan(lambda_reads, 20_000)[1]
    tokens = tokenize_shard(kind, MODELS[kind], lambda_reads.frames, shard, tmp_path / "tokens.arrow")
    table = TableReader(tmp_path / "tokens.arrow")
    tokenizer = load_tokenizer(kind, MODELS[kind])
    assert table.metadata("kind") == kind and table.metadata("tokenizer") == tokenizer.identity
    assert Shard(**table.metadata("shard")) == shard
    frames = PartedTable(lambda_reads.frames, columns=[column]).read(shard.row_start, shard.row_end).column(0)
    expected = tokenizer.encode(frames.combine_chunks())
    written = table.read(0, table.num_rows).column("tokens").combine_chunks()
    assert written.to_pylist() == expected.to_pylist()
    assert tokens == len(expected.values)
    if kind == "esm2":
        assert tokens == shard.protein_tokens


def test_protein_tokens_are_fair_esms(lambda_reads):
    import esm

    alphabet = esm.Alphabet.from_architecture("ESM-1b")
    converter = alphabet.get_batch_converter()
    proteins = PartedTable(lambda_reads.frames, columns=["protein"]).read(0, 50).column(0).to_pylist()
    proteins += ["XBUZO", "", "M"]
    encoded = load_tokenizer("esm2", MODELS["esm2"]).encode(pa.array(proteins)).to_pylist()
    for protein, tokens in zip(proteins, encoded):
        _, _, batch = converter([("p", protein)])
        assert tokens == batch[0].tolist()
