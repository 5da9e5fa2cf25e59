"""The shard plan (sized by work, balanced, independent of GPUs) and stages 3-4 (tokens per shard)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from conftest import BUILTIN_MODELS
from virnucpro.io.ids import unit_names
from virnucpro.io.tables import PartedTable, TableReader
from virnucpro.models.tokens import load_tokenizer
from virnucpro.stages.sharding import Shard, plan_shards, read_shard_plan, shard_of, split_shard, write_shard_plan

MODELS = {"dnabert_s": BUILTIN_MODELS / "dnabert_s_mini", "esm2": BUILTIN_MODELS / "esm2_mini.pt"}


@pytest.fixture(scope="module")
def lambda_reads(data_dir, tmp_path_factory):
    from conftest import PreparedSample

    return PreparedSample(tmp_path_factory.mktemp("sharding"), data_dir / "reads_1.fq.gz", 300, parts=3)


def protein_tokens(prepared) -> np.ndarray:
    frames = PartedTable(prepared.frames, columns=["protein"])
    return np.array([len(p) + 2 for p in frames.read(0, frames.num_rows).column(0).to_pylist()])


def test_unit_names_sort_in_order():
    assert unit_names(3) == ["000", "001", "002"]
    names = unit_names(1234)
    assert names[0] == "0000" and names == sorted(names) and len(set(names)) == 1234


@pytest.mark.parametrize("shard_tokens", [60, 500, 20_000, 300_000, 10**9])
def test_shards_cover_every_frame_once_and_are_balanced(lambda_reads, shard_tokens):
    counts = protein_tokens(lambda_reads)
    shards = plan_shards(lambda_reads.frames, shard_tokens)
    assert shards[0].row_start == 0 and shards[-1].row_end == len(counts)
    assert all(a.row_end == b.row_start for a, b in zip(shards, shards[1:]))
    assert all(shard.frames > 0 for shard in shards)
    assert [s.protein_tokens for s in shards] == [int(counts[s.row_start : s.row_end].sum()) for s in shards]
    wanted = -(-counts.sum() // shard_tokens)
    # A frame is never split: shards smaller than a few frames merge where their cuts coincide.
    assert len(shards) == wanted if shard_tokens >= 10 * counts.max() else len(shards) <= wanted
    if len(shards) > 1 and shard_tokens >= 20_000:
        sizes = [s.protein_tokens for s in shards]
        assert max(sizes) - min(sizes) <= 2 * counts.max()  # balanced, not a full last shard and a remnant
    assert [s.name for s in shards] == unit_names(len(shards))


def test_the_plan_follows_the_frames_not_the_parts(data_dir, lambda_reads, prepare):
    one_part = prepare(data_dir / "reads_1.fq.gz", 300)
    assert plan_shards(one_part.frames, 20_000) == plan_shards(lambda_reads.frames, 20_000)


def test_no_frames_give_no_shards(tmp_path, prepare):
    (tmp_path / "reads.fa").write_text(">stops\n" + "TTAA" * 50 + "\n>short\nAC\n")
    assert plan_shards(prepare(tmp_path / "reads.fa", 300).frames, 1000) == []


def test_shard_plan_round_trip(tmp_path):
    shards = [Shard("000", 0, 10, 500), Shard("001", 10, 25, 498)]
    write_shard_plan(tmp_path / "shards.tsv", shards)
    assert (tmp_path / "shards.tsv").read_text().splitlines()[0] == "shard\trow_start\trow_end\tframes\tprotein_tokens"
    assert read_shard_plan(tmp_path / "shards.tsv") == shards
    assert shard_of(tmp_path / "shards.tsv", "001") == shards[1]
    with pytest.raises(ValueError, match="no shard '002'"):
        shard_of(tmp_path / "shards.tsv", "002")


@pytest.mark.parametrize(("kind", "column"), [("dnabert_s", "nucleotide"), ("esm2", "protein")])
def test_split_writes_each_frame_of_the_shard_as_the_models_tokens(lambda_reads, tmp_path, kind, column):
    shard = plan_shards(lambda_reads.frames, 20_000)[1]
    tokens = split_shard(kind, MODELS[kind], lambda_reads.frames, shard, tmp_path / "tokens.arrow")
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
