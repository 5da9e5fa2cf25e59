import bz2
import gzip
import lzma

import pyarrow as pa
import pytest

try:  # as virnucpro.io.sequences reads it
    from compression import zstd
except ImportError:
    from backports import zstd

from virnucpro.io.atomic import atomic_output, atomic_path
from virnucpro.io.sequences import (InputError, SequenceRecord, fasta_text, protein_like, read_sequences)

FASTA_TEXT = (
    ">read_1 first read, with a description\n"
    "ACGTACGTAC\n"
    "GTNNacgtRY\n"
    "\n"
    ">read_2\n"
    "acgtacgtacgtnnnn\n"
    ">read_3 empty lines around the sequence\n"
    "\n"
    "GGGCCCAAATTT\n"
    "\n"
)
FASTA_RECORDS = [
    SequenceRecord("read_1", "ACGTACGTACGTNNacgtRY"),
    SequenceRecord("read_2", "acgtacgtacgtnnnn"),
    SequenceRecord("read_3", "GGGCCCAAATTT"),
]


def read_all(path):
    return list(read_sequences(path))


def write_bytes(path, content: bytes):
    path.write_bytes(content)
    return path


def read_error(path) -> str:
    with pytest.raises(InputError) as caught:
        read_all(path)
    return str(caught.value)


def test_plain_fasta_ids_are_first_word_and_case_is_kept(tmp_path):
    path = write_bytes(tmp_path / "reads.fa", FASTA_TEXT.encode())
    assert read_all(path) == FASTA_RECORDS


@pytest.mark.parametrize("compress", [gzip.compress, lzma.compress, bz2.compress, zstd.compress],
                         ids=["gzip", "xz", "bzip2", "zstd"])
def test_compressed_fasta_reads_like_the_plain_file(tmp_path, compress):
    # The name says plain FASTA: compression is found from the magic bytes, not the extension.
    path = write_bytes(tmp_path / "reads.fa", compress(FASTA_TEXT.encode()))
    assert read_all(path) == FASTA_RECORDS


def test_plain_file_with_compressed_extension_is_read_as_plain(tmp_path):
    path = write_bytes(tmp_path / "reads.fa.gz", FASTA_TEXT.encode())
    assert read_all(path) == FASTA_RECORDS


def test_windows_line_endings_read_like_unix_ones(tmp_path):
    path = write_bytes(tmp_path / "reads.fa", FASTA_TEXT.replace("\n", "\r\n").encode())
    assert read_all(path) == FASTA_RECORDS


def test_windows_line_endings_in_fastq(tmp_path):
    text = "@r1 desc\nACGTN\n+\nIIII#\n@r2\nacgu\n+r2\nIIII\n"
    path = write_bytes(tmp_path / "reads.fq", text.replace("\n", "\r\n").encode())
    assert read_all(path) == [SequenceRecord("r1", "ACGTN"), SequenceRecord("r2", "acgt")]


def test_u_is_read_as_t_in_both_cases(tmp_path):
    path = write_bytes(tmp_path / "rna.fa", b">rna\nAUGCuuagNU\n")
    assert read_all(path) == [SequenceRecord("rna", "ATGCttagNT")]


def test_all_iupac_codes_are_accepted(tmp_path):
    codes = "ACGTUNRYSWKMBDHV"
    path = write_bytes(tmp_path / "iupac.fa", f">upper\n{codes}\n>lower\n{codes.lower()}\n".encode())
    records = read_all(path)
    assert [r.sequence for r in records] == [codes.replace("U", "T"), codes.lower().replace("u", "t")]


def test_fastq_quality_line_starting_with_at_sign_is_not_a_header(tmp_path):
    path = write_bytes(tmp_path / "reads.fq", b"@r1\nACGT\n+\n@III\n\n@r2\nGG\n+\n@@\n")
    assert read_all(path) == [SequenceRecord("r1", "ACGT"), SequenceRecord("r2", "GG")]


def test_real_fastq_reads(data_dir, tmp_path):
    path = data_dir / "reads_1.fq.gz"
    records = read_all(path)
    assert len(records) == 10_000
    assert len({r.id for r in records}) == 10_000
    assert records[0].id == "r1" and records[-1].id == "r10000"
    with gzip.open(path, "rt") as handle:
        lines = handle.read().splitlines()
    assert [r.sequence for r in records] == lines[1::4]
    assert any("N" in r.sequence for r in records)
    # The same reads uncompressed give the same records.
    plain = write_bytes(tmp_path / "reads_1.fq", gzip.decompress(path.read_bytes()))
    assert read_all(plain) == records


# Bad inputs: every message names the file, and the record or line where there is one.


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"], ids=["zero_bytes", "blank_lines"])
def test_empty_file(tmp_path, content):
    path = write_bytes(tmp_path / "empty.fa", content)
    message = read_error(path)
    assert str(path) in message and "empty" in message


def test_empty_compressed_file(tmp_path):
    path = write_bytes(tmp_path / "empty.fa.gz", gzip.compress(b""))
    message = read_error(path)
    assert str(path) in message and "empty" in message


def test_not_fasta_or_fastq(tmp_path):
    path = write_bytes(tmp_path / "table.tsv", b"id\tsequence\nr1\tACGT\n")
    message = read_error(path)
    assert str(path) in message
    assert "not a FASTA or FASTQ file" in message and "line 1" in message


def test_binary_file_is_an_input_error(tmp_path):
    path = write_bytes(tmp_path / "model.bin", b">r1\nAC\xff\xfe\x00GT\n")
    message = read_error(path)
    assert str(path) in message and "not a text" in message


@pytest.mark.parametrize("compress", [gzip.compress, zstd.compress], ids=["gzip", "zstd"])
def test_a_truncated_compressed_file_is_an_input_error(tmp_path, compress):
    whole = compress(FASTA_TEXT.encode() * 50)
    path = write_bytes(tmp_path / "cut.fa.gz", whole[: len(whole) // 2])
    message = read_error(path)
    assert str(path) in message and "cannot be read" in message


def test_fasta_header_without_id(tmp_path):
    path = write_bytes(tmp_path / "reads.fa", b">r1\nACGT\n>   \nACGT\n")
    message = read_error(path)
    assert str(path) in message and "no sequence ID" in message and "line 3" in message


def test_fastq_header_without_id(tmp_path):
    path = write_bytes(tmp_path / "reads.fq", b"@r1\nACGT\n+\nIIII\n@\nACGT\n+\nIIII\n")
    message = read_error(path)
    assert str(path) in message and "no sequence ID" in message and "line 5" in message


def test_duplicate_ids_differing_only_after_the_first_word(tmp_path):
    path = write_bytes(tmp_path / "reads.fa", b">r1 left mate\nACGT\n>r2\nGG\n>r1 right mate\nTTTT\n")
    message = read_error(path)
    assert str(path) in message and "record 'r1'" in message and "duplicate" in message


def test_duplicate_ids_in_fastq(tmp_path):
    path = write_bytes(tmp_path / "reads.fq", b"@r1\nACGT\n+\nIIII\n@r1\nACGT\n+\nIIII\n")
    message = read_error(path)
    assert str(path) in message and "record 'r1'" in message and "duplicate" in message


@pytest.mark.parametrize(
    ("content", "record", "character", "position"),
    [
        (b">r1\nACGT\n>r2\nACGT\nACXT\n", "r2", "X", 7),  # the position counts across sequence lines
        (b">r1\nACGT-ACGT\n>r2\nACGT\n", "r1", "-", 5),
        (b">r1\nACGT\n>r2\nAC GT\n", "r2", " ", 3),
        (b">protein\nMKVLAAGE\n", "protein", "L", 4),  # M, K and V are IUPAC codes
    ],
)
def test_non_nucleotide_character(tmp_path, content, record, character, position):
    path = write_bytes(tmp_path / "reads.fa", content)
    message = read_error(path)
    assert str(path) in message and f"record '{record}'" in message
    assert f"character '{character}' at position {position}" in message
    assert ("looks like a protein" in message) == (record == "protein")


def test_protein_written_in_iupac_letters_is_told_from_dna():
    """Not refused (every letter is a valid IUPAC code), but flagged for a warning."""
    sequences = ["MKKSWRDVHACGTTRKSDYVMHW",  # a protein of IUPAC letters
                 "ACGTACGTRYACGTACGTACGTNNNNNNNNNN",  # DNA with a few ambiguity codes and a run of N
                 "RYKM"]  # too short to tell
    assert protein_like(pa.array(sequences)).tolist() == [True, False, False]


def test_a_latin1_header_deep_in_a_file_is_read(tmp_path):
    """Decided: a header that is not UTF-8 is read as Latin-1, the usual 8-bit encoding of older
    FASTA files; outputs are written in UTF-8."""
    body = b"".join(b">r%d desc\n%s\n" % (i, b"ACGT" * 10) for i in range(300))
    path = write_bytes(tmp_path / "reads.fa", body + b">bad caf\xe9 na\xefve\nACGT\n>after \xc3\xa9t\xc3\xa9\nGG\n")
    records = read_all(path)
    assert len(records) == 302
    assert records[300] == SequenceRecord("bad", "ACGT") and records[300].description == "café naïve"
    assert records[301].description == "été"  # UTF-8 stays UTF-8
    fastq = write_bytes(tmp_path / "reads.fq", b"@r1\nACGT\n+\nIIII\n@r2 Stra\xdfe\nGG\n+\nII\n")
    assert [(r.id, r.description) for r in read_all(fastq)] == [("r1", ""), ("r2", "Straße")]


def test_a_non_text_byte_in_a_sequence_names_its_record_and_line(tmp_path):
    body = b"".join(b">r%d\n%s\n" % (i, b"ACGT" * 10) for i in range(300))
    message = read_error(write_bytes(tmp_path / "reads.fa", body + b">bad caf\xe9\nAC\xe9GT\n"))
    assert "record 'bad', line 602: not a text FASTA or FASTQ file: byte 0xe9 in a sequence line" in message


def test_fastq_wrapped_over_several_lines_is_read(tmp_path):
    path = write_bytes(tmp_path / "reads.fq", b"@r1\nACGT\n+\nIIII\n@r2 wrapped\nACGTAC\nGTA\n+\n@IIIII\nIII\n"
                                              b"@r3\nGG\n+\nII\n")
    assert read_all(path) == [SequenceRecord("r1", "ACGT"), SequenceRecord("r2", "ACGTACGTA"),
                              SequenceRecord("r3", "GG")]
    path = write_bytes(tmp_path / "bad.fq", b"@r1\nACGT\n+\nIIII\n@r2\nACGTAC\nGTA\n+\nIIIII\nIII\n")
    message = read_error(path)
    assert "record 'r2'" in message and "differ in length" in message


def test_non_nucleotide_character_in_fastq(tmp_path):
    path = write_bytes(tmp_path / "reads.fq", b"@r1\nACGT\n+\nIIII\n@r2\nAC1T\n+\nIIII\n")
    message = read_error(path)
    assert str(path) in message and "record 'r2'" in message and "character '1' at position 3" in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"@r1\nACGT\n+\nIIII\n@r2\n", "truncated"),
        (b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n", "truncated"),
        (b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nII\n", "differ in length"),
        (b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\n", "differ in length"),
    ],
    ids=["header_only", "no_plus_line", "short_quality", "no_quality"],
)
def test_truncated_fastq(tmp_path, content, problem):
    path = write_bytes(tmp_path / "reads.fq", content)
    message = read_error(path)
    assert str(path) in message and "record 'r2'" in message and problem in message


def test_fastq_record_not_starting_with_at_sign(tmp_path):
    path = write_bytes(tmp_path / "reads.fq", b"@r1\nACGT\n+\nIIII\nr2\nACGT\n+\nIIII\n")
    message = read_error(path)
    assert str(path) in message and "must start with '@'" in message and "line 5" in message


def test_records_before_a_bad_one_are_yielded(tmp_path):
    path = write_bytes(tmp_path / "reads.fa", b">r1\nACGT\n>r2\nACGT\n>r2\nACGT\n")
    records = read_sequences(path)
    assert [next(records).id, next(records).id] == ["r1", "r2"]
    with pytest.raises(InputError):
        next(records)


def test_missing_file_is_not_an_input_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_all(tmp_path / "absent.fa")


# Atomic outputs.


def test_atomic_output_writes_the_final_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.fa"
    with atomic_output(path) as handle:
        handle.write(fasta_text(["r1"], ["ACGT" * 30], line_width=60))
        assert not path.exists()
    assert path.read_text() == ">r1\n" + "ACGT" * 15 + "\n" + "ACGT" * 15 + "\n"
    assert [p.name for p in path.parent.iterdir()] == ["out.fa"]


def test_failure_inside_atomic_output_leaves_no_file(tmp_path):
    path = tmp_path / "out.fa"
    with pytest.raises(RuntimeError):
        with atomic_output(path) as handle:
            handle.write(">r1\nACGT\n")
            handle.flush()
            raise RuntimeError("killed half way")
    assert list(tmp_path.iterdir()) == []


def test_failure_inside_atomic_output_keeps_the_previous_file(tmp_path):
    path = write_bytes(tmp_path / "out.fa", b">old\nAAAA\n")
    with pytest.raises(RuntimeError):
        with atomic_output(path) as handle:
            handle.write(">new\n")
            raise RuntimeError("killed half way")
    assert path.read_bytes() == b">old\nAAAA\n"
    assert list(tmp_path.iterdir()) == [path]


def test_failure_inside_atomic_path_leaves_no_file(tmp_path):
    path = tmp_path / "summary.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(path) as temporary:
            temporary.write_bytes(b"partial")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_moves_the_written_file_into_place(tmp_path):
    path = tmp_path / "summary.parquet"
    with atomic_path(path) as temporary:
        assert temporary != path and temporary.parent == path.parent
        temporary.write_bytes(b"done")
    assert path.read_bytes() == b"done"
    assert list(tmp_path.iterdir()) == [path]


def test_fasta_text_wraps_like_biopython(tmp_path):
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqRecord import SeqRecord

    ids, sequences = ["a_chunk_1", "b_chunk_2", "c"], ["ACGTN" * 40, "", "ACGT" * 15]
    with open(tmp_path / "biopython.fa", "w") as handle:
        SeqIO.write([SeqRecord(Seq(s), id=i, description="") for i, s in zip(ids, sequences)], handle, "fasta")
    assert fasta_text(ids, sequences, line_width=60) == (tmp_path / "biopython.fa").read_text()
    assert fasta_text(ids, sequences) == "".join(f">{i}\n{s}\n" for i, s in zip(ids, sequences))


def test_a_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "bom.fa"
    path.write_bytes(b"\xef\xbb\xbf>r1 x\nACGT\n")
    assert list(read_sequences(path)) == [SequenceRecord("r1", "ACGT")]


# b"caf\xe9" (Latin-1) in a first header sends the file to the line parser, which must agree with dnaio
@pytest.mark.parametrize("first", [b">r1\n", b">caf\xe9\n"], ids=["dnaio", "line parser"])
def test_the_id_is_the_first_word_after_leading_whitespace_as_biopython_reads_it(tmp_path, first):
    path = write_bytes(tmp_path / "reads.fa", first + b"ACGT\n>\tID2 second read\nACGT\n> ID3\nGG\n")
    records = list(read_sequences(path))
    assert [record.id for record in records[1:]] == ["ID2", "ID3"]
    assert records[1].description == "second read"


@pytest.mark.parametrize("first", [b">r1\n", b">caf\xe9\n"], ids=["dnaio", "line parser"])
def test_a_nul_byte_in_a_header_is_refused(tmp_path, first):
    path = write_bytes(tmp_path / "reads.fa", first + b"ACGT\n>a\x00b c\nACGT\n")
    assert read_error(path) == f"{path}, line 3: a NUL byte (0x00) in the header"
