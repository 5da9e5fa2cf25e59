import math
import random

import numpy as np
import pytest

from virnucpro.io.ids import chunk_id
from virnucpro.io.schemas import READ_SCHEMA
from virnucpro.io.sequences import InputError, read_records, read_sequences
from virnucpro.io.tables import PartedTable
from virnucpro.stages.chunking import chunk_layout, chunk_start


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
    layout = chunk_layout(np.array([length]), size)
    return list(zip(layout.start.tolist(), (layout.start + layout.length).tolist()))


def chunk_sequence(sequence: str, size: int) -> list[str]:
    return [sequence[start:end] for start, end in spans(len(sequence), size)]


def chunk_records(prepared) -> list[tuple[str, str]]:
    """(ID, sequence) of the chunks in the chunk file the workflow assembles from the parts."""
    path = prepared.directory / "chunked.fa"
    path.write_text(prepared.text("chunked_fasta"))
    return [(record.id, record.sequence) for record in read_records(path)]


@pytest.mark.parametrize("name", ["test_with_orfs", "test_fixed_500bp"])
def test_chunk_file_is_byte_identical_to_the_original(reference_dir, prepare, name):
    prepared = prepare(reference_dir / f"{name}.fa", 500)
    assert prepared.text("chunked_fasta") == (reference_dir / f"{name}_chunked500.fa").read_text()


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
    assert spans(0, 300) == [] and chunk_sequence("", 300) == []
    with pytest.raises(ValueError):
        spans(100, 0)


def test_chunk_id():
    assert chunk_id("gi|9626243|ref|NC_001416.1|", 12) == "gi|9626243|ref|NC_001416.1|_chunk_12"


def write_fasta_lines(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_read_manifest_and_chunk_file(tmp_path, prepare):
    rng = random.Random(7)
    long_read = random_sequence(rng, 640).lower()
    long_read = long_read[:100] + "nnnRY" + long_read[105:]
    short_read = random_sequence(rng, 300)
    input_path = write_fasta_lines(
        tmp_path / "reads.fa",
        [">long first read", *(long_read[i : i + 70] for i in range(0, 640, 70)),
         ">empty", ">short placed origin=NC_001416.1:1234", short_read[:150], short_read[150:]],
    )

    prepared = prepare(input_path, 300, read_origins=True)

    manifest = PartedTable(prepared.reads)
    assert manifest.schema.remove_metadata() == READ_SCHEMA
    assert manifest.read(0, 3).to_pydict() == {
        "read_index": [0, 1, 2],
        "read_id": ["long", "empty", "short"],
        "length": [640, 0, 300],
        "ambiguous_bases": [5, 0, 0],
        "chunks": [3, 0, 1],
        "origin_sequence": [None, None, "NC_001416.1"],
        "origin_position": [None, None, 1234],
    }
    chunks = chunk_records(prepared)
    assert [c[0] for c in chunks] == ["long_chunk_1", "long_chunk_2", "long_chunk_3", "short_chunk_1"]
    assert [c[1] for c in chunks] == chunk_sequence(long_read, 300) + [short_read]
    assert chunks[0][1][:100].islower()  # case is kept, as the original writes it
    table = PartedTable(prepared.chunks).read(0, 4).to_pydict()
    assert table["read_index"] == [0, 0, 0, 2] and table["chunk"] == [1, 2, 3, 1]
    assert table["start"] == [start for start, _ in spans(640, 300)] + [0]


def test_parts_give_the_same_reads_and_chunks_as_one_part(data_dir, prepare):
    one, several = prepare(data_dir / "reads_1.fq.gz", 300), prepare(data_dir / "reads_1.fq.gz", 300, parts=4)
    for kind in ("reads", "chunks"):
        whole, parted = PartedTable(getattr(one, kind)), PartedTable(getattr(several, kind))
        assert parted.num_rows == whole.num_rows > 10_000 - 1
        assert parted.read(0, parted.num_rows).equals(whole.read(0, whole.num_rows))
    assert several.text("chunked_fasta") == one.text("chunked_fasta")
    assert len({PartedTable([path]).num_rows for path in several.reads}) > 1  # the parts differ


def test_the_first_part_is_small_so_that_the_gpu_work_starts_early(tmp_path, monkeypatch):
    from virnucpro.stages import partition

    monkeypatch.setattr(partition, "INPUT_BATCH_ROWS", 8 * 16)  # batches of 16 records: parts to the record
    rng = random.Random(5)
    with open(tmp_path / "reads.fa", "w") as out:
        out.writelines(f">r{i}\n{random_sequence(rng, 150)}\n" for i in range(20_000))
    parts = [tmp_path / f"{name}.arrow" for name in ("000", "001", "002")]
    result = partition.partition_input(tmp_path / "reads.fa", parts)
    assert result.reads == sum(result.reads_per_part) == 20_000
    first, *later = result.reads_per_part
    assert later[0] == pytest.approx(later[1], abs=16)
    assert first == pytest.approx(later[0] * partition.FIRST_PART_SHARE, abs=16)
    assert [PartedTable([path]).num_rows for path in parts] == result.reads_per_part


def test_chunk_file_is_wrapped_at_60_columns(tmp_path, prepare):
    sequence = random_sequence(random.Random(3), 500)
    prepared = prepare(write_fasta_lines(tmp_path / "reads.fa", [">r", sequence]), 500)
    lines = [sequence[i : i + 60] for i in range(0, 500, 60)]
    assert prepared.text("chunked_fasta") == ">r_chunk_1\n" + "\n".join(lines) + "\n"


def test_bad_input_leaves_no_chunk_file_or_manifest(tmp_path, prepare):
    input_path = write_fasta_lines(tmp_path / "reads.fa", [">r1", "ACGT" * 100, ">r2", "ACGTQ"])
    with pytest.raises(InputError, match="reads.fa, record 'r2'"):
        prepare(input_path, 300)
    assert not list(tmp_path.rglob("reads/*")) and not list(tmp_path.rglob("chunked/*"))
    assert not list(tmp_path.rglob(".*tmp*"))


def test_lambda_genome_chunks_back_into_the_genome(data_dir, prepare):
    genome_path = data_dir / "lambda_virus.fa.gz"
    [genome] = read_sequences(genome_path)
    assert len(genome.sequence) == 48_502

    chunks = chunk_records(prepare(genome_path, 300))

    assert [c[0] for c in chunks] == [f"gi|9626243|ref|NC_001416.1|_chunk_{k}" for k in range(1, 163)]
    assert all(len(c[1]) == 300 for c in chunks)
    # 162 * 300 - 48,502 = 98 bases are covered twice: the first 98 neighbours overlap by one base.
    overlaps = [1] * 98 + [0] * 63
    joined = chunks[0][1]
    for chunk, overlap in zip(chunks[1:], overlaps):
        assert joined.endswith(chunk[1][:overlap])
        joined += chunk[1][overlap:]
    assert joined == genome.sequence


def test_chunk_layout_of_many_sequences_is_each_ones_layout():
    lengths = np.array([0, 1, 299, 300, 301, 48_502, 1000, 0, 7])
    layout = chunk_layout(lengths, 300)
    for index, length in enumerate(lengths.tolist()):
        mine = layout.sequence == index
        assert list(zip(layout.start[mine].tolist(), (layout.start + layout.length)[mine].tolist())) == spans(length, 300)
        assert layout.number[mine].tolist() == list(range(1, mine.sum() + 1))
    assert chunk_start(lengths[layout.sequence], layout.number, 300).tolist() == layout.start.tolist()


def test_a_malformed_origin_in_a_training_input_is_an_input_error(tmp_path, prepare):
    input_path = write_fasta_lines(tmp_path / "reads.fa", [">r1 origin=lambda", "ACGT"])
    with pytest.raises(InputError, match="reads.fa, record 'r1': origin must be <sequence>:<1-based position>"):
        prepare(input_path, 300, read_origins=True)


def test_origin_is_free_text_in_a_prediction_input(tmp_path, prepare):
    """Public FASTA files say e.g. `origin=environmental`; only training inputs place reads by it."""
    input_path = write_fasta_lines(tmp_path / "reads.fa", [">r1 origin=environmental", "ACGTACGT",
                                                          ">r2 placed origin=NC_001416.1:1234", "ACGT"])
    manifest = PartedTable(prepare(input_path, 300).reads).read(0, 2).to_pydict()
    assert manifest["read_id"] == ["r1", "r2"]
    assert manifest["origin_sequence"] == [None, None] and manifest["origin_position"] == [None, None]


def test_a_part_of_protein_like_reads_warns(tmp_path, prepare):
    from virnucpro.stages.chunking import chunk_part

    input_path = write_fasta_lines(tmp_path / "proteins.fa", [">p1 a protein", "MKKSWRDVHACGTTRKSDYVMHW",
                                                             ">d1 a read", "ACGT" * 20])
    prepared = prepare(input_path, 300)
    result = chunk_part(prepared.input_parts[0], 300, tmp_path / "r.arrow", tmp_path / "c.arrow",
                        tmp_path / "i.arrow")
    assert len(result.warnings) == 1
    assert "proteins.fa: 1 of 2 reads of this part look like protein" in result.warnings[0]
    assert "the first is 'p1'" in result.warnings[0]
    dna = write_fasta_lines(tmp_path / "dna.fa", [">d1", "ACGTRYACGT" * 5])
    assert chunk_part(prepare(dna, 300).input_parts[0], 300, tmp_path / "r.arrow", tmp_path / "c.arrow",
                      tmp_path / "i.arrow").warnings == []
