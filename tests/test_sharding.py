import pytest

from virnucpro.chunking import chunk_reads
from virnucpro.sequence_io import read_fasta_simple
from virnucpro.sharding import count_fasta_records, shard_bounds, shard_names, split_fasta
from virnucpro.translation import identify_frames


@pytest.fixture(scope="module")
def identified(data_dir, tmp_path_factory):
    """The identified nucleotide and protein files of the 10,000 real reads, at chunk length 300."""
    directory = tmp_path_factory.mktemp("identified")
    chunks_path = directory / "chunks.fa"
    chunk_reads(data_dir / "reads_1.fq.gz", chunks_path, directory / "reads.parquet", 300)
    nucleotide_path, protein_path = directory / "nucleotide.fa", directory / "protein.faa"
    identify_frames(chunks_path, nucleotide_path, protein_path, directory / "chunks.parquet", 0.5)
    return nucleotide_path, protein_path


def ids(path) -> list[str]:
    return [record.id for record in read_fasta_simple(path)]


def test_shard_names_sort_in_shard_order():
    assert shard_names(1) == ["000"]
    assert shard_names(3) == ["000", "001", "002"]
    for count in (9, 10, 11, 999, 1000, 1001, 12_345):
        names = shard_names(count)
        assert len(names) == count and len(set(names)) == count
        assert sorted(names) == names
        assert [int(name) for name in names] == list(range(count))
        assert len({len(name) for name in names}) == 1
    assert shard_names(1001)[-1] == "1000"


@pytest.mark.parametrize("count", [0, -1])
def test_shard_names_need_a_shard(count):
    with pytest.raises(ValueError):
        shard_names(count)


def test_shard_bounds_are_contiguous_and_even():
    for records in range(0, 60):
        for shards in range(1, 15):
            bounds = shard_bounds(records, shards)
            assert len(bounds) == shards
            assert bounds[0][0] == 0 and bounds[-1][1] == records
            assert all(stop == next_start for (_, stop), (next_start, _) in zip(bounds, bounds[1:]))
            sizes = [stop - start for start, stop in bounds]
            assert sum(sizes) == records
            assert max(sizes) - min(sizes) <= 1


def test_shard_bounds_formula():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(2, 4) == [(0, 0), (0, 1), (1, 1), (1, 2)]
    assert shard_bounds(1_000_003, 1) == [(0, 1_000_003)]


@pytest.mark.parametrize("shards", [1, 3, 7])
def test_split_real_identified_frames(identified, tmp_path, shards):
    nucleotide_path, protein_path = identified
    records = count_fasta_records(nucleotide_path)
    assert records > 1000 and count_fasta_records(protein_path) == records
    names = shard_names(shards)
    nucleotide_shards = [tmp_path / "nucleotide" / f"{name}.fa" for name in names]
    protein_shards = [tmp_path / "protein" / f"{name}.faa" for name in names]

    nucleotide_counts = split_fasta(nucleotide_path, nucleotide_shards)
    protein_counts = split_fasta(protein_path, protein_shards)

    expected_counts = [stop - start for start, stop in shard_bounds(records, shards)]
    assert nucleotide_counts == protein_counts == expected_counts
    assert b"".join(p.read_bytes() for p in nucleotide_shards) == nucleotide_path.read_bytes()
    assert b"".join(p.read_bytes() for p in protein_shards) == protein_path.read_bytes()
    for nucleotide_shard, protein_shard, count in zip(nucleotide_shards, protein_shards, expected_counts):
        shard_ids = ids(nucleotide_shard)
        assert len(shard_ids) == count
        assert shard_ids == ids(protein_shard)
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left behind


def test_more_shards_than_records(identified, tmp_path):
    nucleotide_path, _ = identified
    lines = nucleotide_path.read_text().splitlines(keepends=True)
    head = tmp_path / "head.fa"
    head.write_text("".join(lines[:8]))  # four single-line records
    shard_paths = [tmp_path / "shards" / f"{name}.fa" for name in shard_names(7)]

    counts = split_fasta(head, shard_paths)

    assert counts == [0, 1, 0, 1, 0, 1, 1]
    assert all(path.exists() for path in shard_paths)  # every expected output exists, empty or not
    assert "".join(path.read_text() for path in shard_paths) == head.read_text()
    assert [ids(path) for path in shard_paths] == [[], ids(head)[:1], [], ids(head)[1:2], [], ids(head)[2:3],
                                                   ids(head)[3:]]


def test_split_empty_file(tmp_path):
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    shard_paths = [tmp_path / f"{name}.fa" for name in shard_names(3)]
    assert split_fasta(empty, shard_paths) == [0, 0, 0]
    assert [path.read_text() for path in shard_paths] == ["", "", ""]
