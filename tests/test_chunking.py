import math
import random

import pyarrow.parquet as pq
import pytest

from virnucpro.chunking import (
    READ_MANIFEST_SCHEMA,
    ChunkingResult,
    chunk_id,
    chunk_reads,
    chunk_sequence,
    chunk_starts,
)
from virnucpro.sequence_io import InputError, read_fasta_simple, read_sequences


def original_chunks(sequence: str, size: int) -> list[str]:
    """VirNucPro's split_fasta_chunk, transcribed statement by statement (overlap quirk included)."""
    length = len(sequence)
    num_chunks = math.ceil(length / size)
    total_repeat_length = num_chunks * size - length
    repeat_length_per_chunk_lower = int(total_repeat_length / num_chunks)
    repeat_length_per_chunk_upper = repeat_length_per_chunk_lower + 1
    need_upper = total_repeat_length - (num_chunks - 1) * repeat_length_per_chunk_lower
    overlaps = (
        [repeat_length_per_chunk_upper] * need_upper
        + [repeat_length_per_chunk_lower] * (num_chunks - 1 - need_upper)
        + [0]
    )
    chunks, move = [], 0
    for a, b in zip(range(0, length, size), overlaps):
        chunk = sequence[a - move : a - move + size] if a > 1 else sequence[a : a + size]
        chunks.append(chunk)
        move += b
    return chunks


def random_sequence(rng: random.Random, length: int) -> str:
    return "".join(rng.choices("ACGT", k=length))


def spans(length: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, length)) for start in chunk_starts(length, size)]


@pytest.mark.parametrize("name", ["test_with_orfs", "test_fixed_500bp"])
def test_chunk_file_is_byte_identical_to_the_original(reference_dir, tmp_path, name):
    chunks_path = tmp_path / "chunks.fa"
    chunk_reads(reference_dir / f"{name}.fa", chunks_path, tmp_path / "reads.parquet", 500)
    assert chunks_path.read_bytes() == (reference_dir / f"{name}_chunked500.fa").read_bytes()


BOUNDARIES = {
    300: {
        1: [(0, 1)],
        299: [(0, 299)],
        300: [(0, 300)],
        301: [(0, 300), (150, 301)],
        600: [(0, 300), (300, 600)],
        601: [(0, 300), (200, 500), (400, 601)],
        899: [(0, 300), (299, 599), (599, 899)],
        3007: [(273 * k, 273 * k + 300) for k in range(10)] + [(2730, 3007)],
    },
    500: {
        1: [(0, 1)],
        499: [(0, 499)],
        500: [(0, 500)],
        501: [(0, 500), (250, 501)],
        1000: [(0, 500), (500, 1000)],
        1001: [(0, 500), (333, 833), (666, 1001)],
        1499: [(0, 500), (499, 999), (999, 1499)],
        5007: [(455 * k, 455 * k + 500) for k in range(10)] + [(4550, 5007)],
    },
}


@pytest.mark.parametrize(
    ("size", "length"), [(size, length) for size, table in BOUNDARIES.items() for length in table]
)
def test_chunk_boundaries(size, length):
    expected = BOUNDARIES[size][length]
    assert spans(length, size) == expected
    sequence = random_sequence(random.Random(length), length)
    assert chunk_sequence(sequence, size) == [sequence[start:end] for start, end in expected]


@pytest.mark.parametrize("size", [300, 500])
def test_chunks_cover_the_sequence_without_exceeding_the_size(size):
    for length in [*range(1, 3 * size + 2), 10 * size + 7, 48_502, 100_003]:
        chunk_spans = spans(length, size)
        assert len(chunk_spans) == math.ceil(length / size)
        assert chunk_spans[0][0] == 0 and chunk_spans[-1][1] == length
        assert all(0 < end - start <= size for start, end in chunk_spans)
        for (start, end), (next_start, next_end) in zip(chunk_spans, chunk_spans[1:]):
            assert start < next_start <= end < next_end  # ordered, no gap between neighbours


@pytest.mark.parametrize("size", [300, 500])
def test_chunk_sequence_matches_the_original_algorithm(size):
    rng = random.Random(size)
    genome = random_sequence(rng, 2000)
    for length in range(1, 2001):
        sequence = genome[:length]
        assert chunk_sequence(sequence, size) == original_chunks(sequence, size), length


def test_empty_sequence_and_bad_size():
    assert chunk_starts(0, 300) == [] and chunk_sequence("", 300) == []
    with pytest.raises(ValueError):
        chunk_starts(100, 0)


def test_chunk_id():
    assert chunk_id("gi|9626243|ref|NC_001416.1|", 12) == "gi|9626243|ref|NC_001416.1|_chunk_12"


def write_fasta_lines(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_read_manifest_and_chunk_file(tmp_path):
    rng = random.Random(7)
    long_read = random_sequence(rng, 640).lower()
    long_read = long_read[:100] + "nnnRY" + long_read[105:]
    short_read = random_sequence(rng, 300)
    input_path = write_fasta_lines(
        tmp_path / "reads.fa",
        [">long first read", *(long_read[i : i + 70] for i in range(0, 640, 70)),
         ">empty", ">short placed origin=NC_001416.1:1234", short_read[:150], short_read[150:]],
    )
    chunks_path, manifest_path = tmp_path / "out" / "chunks.fa", tmp_path / "out" / "reads.parquet"

    result = chunk_reads(input_path, chunks_path, manifest_path, 300)

    assert result == ChunkingResult(reads=3, chunks=4, bases=940)
    manifest = pq.read_table(manifest_path)
    assert manifest.schema == READ_MANIFEST_SCHEMA
    assert manifest.to_pydict() == {
        "read_index": [0, 1, 2],
        "read_id": ["long", "empty", "short"],
        "length": [640, 0, 300],
        "ambiguous_bases": [5, 0, 0],
        "chunks": [3, 0, 1],
        "origin_sequence": [None, None, "NC_001416.1"],
        "origin_position": [None, None, 1234],
    }
    chunks = list(read_fasta_simple(chunks_path))
    assert [c.id for c in chunks] == ["long_chunk_1", "long_chunk_2", "long_chunk_3", "short_chunk_1"]
    assert [c.sequence for c in chunks] == chunk_sequence(long_read, 300) + [short_read]
    assert chunks[0].sequence[:100].islower()  # case is kept, as the original writes it


def test_chunk_file_is_wrapped_at_60_columns(tmp_path):
    sequence = random_sequence(random.Random(3), 500)
    input_path = write_fasta_lines(tmp_path / "reads.fa", [">r", sequence])
    chunks_path = tmp_path / "chunks.fa"
    chunk_reads(input_path, chunks_path, tmp_path / "reads.parquet", 500)
    lines = [sequence[i : i + 60] for i in range(0, 500, 60)]
    assert chunks_path.read_text() == ">r_chunk_1\n" + "\n".join(lines) + "\n"


def test_bad_input_leaves_no_chunk_file_or_manifest(tmp_path):
    input_path = write_fasta_lines(tmp_path / "reads.fa", [">r1", "ACGT" * 100, ">r2", "ACGTQ"])
    chunks_path, manifest_path = tmp_path / "chunks.fa", tmp_path / "reads.parquet"
    with pytest.raises(InputError, match="record 'r2'"):
        chunk_reads(input_path, chunks_path, manifest_path, 300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reads.fa"]


def test_lambda_genome_chunks_back_into_the_genome(data_dir, tmp_path):
    genome_path = data_dir / "lambda_virus.fa.gz"
    [genome] = read_sequences(genome_path)
    assert len(genome.sequence) == 48_502
    chunks_path = tmp_path / "chunks.fa"

    result = chunk_reads(genome_path, chunks_path, tmp_path / "reads.parquet", 300)

    assert result == ChunkingResult(reads=1, chunks=162, bases=48_502)
    chunks = list(read_fasta_simple(chunks_path))
    assert [c.id for c in chunks] == [f"gi|9626243|ref|NC_001416.1|_chunk_{k}" for k in range(1, 163)]
    assert all(len(c.sequence) == 300 for c in chunks)
    # 162 * 300 - 48,502 = 98 bases are covered twice: the first 98 neighbours overlap by one base.
    overlaps = [1] * 98 + [0] * 63
    joined = chunks[0].sequence
    for chunk, overlap in zip(chunks[1:], overlaps):
        assert joined.endswith(chunk.sequence[:overlap])
        joined += chunk.sequence[overlap:]
    assert joined == genome.sequence


def test_a_malformed_origin_is_an_input_error(tmp_path):
    input_path = write_fasta_lines(tmp_path / "reads.fa", [">r1 origin=lambda", "ACGT"])
    with pytest.raises(InputError, match="reads.fa, record 'r1': origin must be <sequence>:<1-based position>"):
        chunk_reads(input_path, tmp_path / "c.fa", tmp_path / "m.parquet", 300)
    assert not (tmp_path / "c.fa").exists()
