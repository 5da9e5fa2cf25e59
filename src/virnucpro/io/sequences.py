"""Reading sequence files (FASTA or FASTQ, plain or compressed) and checking what they hold.

Records are read with dnaio, a C reader (cutadapt's), which also checks the FASTQ structure. Two
kinds of valid file it does not read are handed to this module's own line parser, which carries on
after the records already read: files with non-ASCII bytes in a header (read as UTF-8, or as
Latin-1 where a header is not valid UTF-8) and FASTQ with sequences wrapped over several lines.

Every problem in an input file is reported as an `InputError` that names the file, the record and
what is wrong, and the line where one is known, so that a user can fix the input instead of
guessing.
"""

from __future__ import annotations

import ast
import bz2
import io
import itertools
import lzma
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import dnaio
import numpy as np
import pyarrow as pa

from virnucpro.io.errors import VirnucproError
from virnucpro.io.tables import string_bytes

try:  # ISA-L's gzip, several times faster than zlib's; installed with dnaio on x86-64 and ARM
    from isal.igzip import IGzipFile as _GzipFile
except ImportError:  # pragma: no cover - other platforms
    from gzip import GzipFile as _GzipFile
try:  # Zstandard: in the standard library from Python 3.14, its backport (a dependency) before
    from compression import zstd
except ImportError:
    from backports import zstd

_COMPRESSION_MAGIC = (
    (b"\x1f\x8b", lambda raw: _GzipFile(fileobj=raw, mode="rb")),
    (b"\xfd7zXZ\x00", lambda raw: lzma.LZMAFile(raw)),
    (b"BZh", lambda raw: bz2.BZ2File(raw)),
    (b"\x28\xb5\x2f\xfd", lambda raw: zstd.ZstdFile(raw)),
)
_BYTE_ORDER_MARK = b"\xef\xbb\xbf"
_READ_ERRORS = (EOFError, OSError, lzma.LZMAError, zlib.error, zstd.ZstdError)


class InputError(VirnucproError):
    """A problem with an input file, named by file, record and what is wrong."""

    def __init__(self, path: str | os.PathLike, problem: str, record: str | None = None, line: int | None = None):
        where = str(path)
        if record is not None:
            where += f", record '{record}'"
        if line is not None:
            where += f", line {line}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class SequenceRecord:
    id: str
    sequence: str
    description: str = field(default="", compare=False)  # the header after the ID


def _open_binary(path: str | os.PathLike) -> tuple[io.BufferedReader, io.BufferedIOBase]:
    """The file itself and its decompressed bytes (compression found from the magic bytes)."""
    raw = open(path, "rb")
    head = raw.peek(6)[:6]
    opener = next((open_fn for magic, open_fn in _COMPRESSION_MAGIC if head.startswith(magic)), None)
    stream = io.BufferedReader(opener(raw), buffer_size=1 << 20) if opener else raw
    if stream.peek(3)[:3] == _BYTE_ORDER_MARK:
        stream.read(3)
    return raw, stream


def _sniff_format(path, stream: io.BufferedReader) -> str:
    """'fasta' or 'fastq' from the first non-blank byte; InputError for anything else."""
    line_number = 1
    while True:
        head = stream.peek(1 << 16)
        if not head:
            raise InputError(path, "the file is empty: no FASTA or FASTQ records")
        content = head.lstrip()
        if content:
            line_number += head[: len(head) - len(content)].count(b"\n")
            break
        line_number += head.count(b"\n")
        stream.read(len(head))
    if content.startswith(b">"):
        return "fasta"
    if content.startswith(b"@"):
        return "fastq"
    shown = content.split(b"\n", 1)[0][:40].decode("latin-1").encode("unicode_escape").decode()
    raise InputError(path, f"not a FASTA or FASTQ file: the first line starts with '{shown}'", line=line_number)


class _HandOver(Exception):
    """dnaio cannot read the rest of this file; the line parser takes over."""


@dataclass
class RecordBatch:
    """Consecutive records as columns; `position` is where in the file as stored (compressed bytes
    read so far) the batch ends."""

    ids: list[str]
    headers: list[str]  # the header after '>' or '@': the ID, then any description
    sequences: list[str]
    position: int

    def __len__(self) -> int:
        return len(self.ids)


def read_record_batches(path: str | os.PathLike, batch_records: int = 4096) -> Iterator[RecordBatch]:
    """Yield the records of a FASTA or FASTQ file in batches, in order.

    Checks the file's structure, not the sequences' letters (see `check_nucleotides`).
    """
    count = 0
    try:
        raw, stream = _open_binary(path)
        with raw, stream:
            file_format = _sniff_format(path, stream)
            try:
                for records in _batches(_dnaio_records(path, stream, file_format), batch_records):
                    count += len(records)
                    yield RecordBatch(*map(list, zip(*records)), position=_position(path, raw))
                return
            except _HandOver:
                pass
        raw, stream = _open_binary(path)
        with raw, stream:
            parse = _parse_fasta_lines if file_format == "fasta" else _parse_fastq_lines
            records = itertools.islice(parse(path, stream), count, None)
            for batch in _batches(records, batch_records):
                yield RecordBatch(*map(list, zip(*batch)), position=_position(path, raw))
    except _READ_ERRORS as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise InputError(path, f"cannot be read: {error}") from None


def _position(path, raw: io.BufferedReader) -> int:
    # dnaio closes the file when it reaches its end
    return os.path.getsize(path) if raw.closed else raw.tell()


def _batches(records: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    while batch := list(itertools.islice(records, size)):
        yield batch


def read_records(path: str | os.PathLike) -> Iterator[SequenceRecord]:
    """The records of a FASTA or FASTQ file one by one (structure checked, letters not)."""
    for batch in read_record_batches(path, batch_records=256):
        for record_id, header, sequence in zip(batch.ids, batch.headers, batch.sequences):
            yield SequenceRecord(record_id, sequence, header.strip()[len(record_id) :].strip())


def _dnaio_records(path, stream, file_format: str) -> Iterator[tuple[str, str, str]]:
    last, index = None, 0
    try:
        with dnaio.open(stream, fileformat=file_format, mode="r") as reader:
            for index, record in enumerate(reader):
                record_id = record.id
                # dnaio's ID ends at a NUL and is empty after leading whitespace: rare, checked here
                if not record_id or "\0" in record.name:
                    record_id = _record_id(path, record.name, lambda: _header_line(path, file_format, index))
                last = record_id
                yield record_id, record.name, record.sequence
    except UnicodeDecodeError:
        raise _HandOver from None  # a header that is not ASCII
    except (dnaio.exceptions.FastqFormatError, dnaio.exceptions.FastaFormatError) as error:
        message, line = str(error), None if error.line is None else error.line + 1
        blank_line = "Line expected to start with '@'" in message and not _quoted_after(message, "but found ").strip()
        if "ASCII" in message or "Line expected to start with '+'" in message or blank_line:
            # a non-ASCII header, a FASTQ sequence wrapped over lines, a blank line between records
            raise _HandOver from None
        incomplete = _quoted_after(message, "final record was: ").split("\n") if "Premature end" in message else None
        if incomplete is not None and not "".join(incomplete).strip():
            return  # only blank lines after the last record
        if "Line expected to start with '@'" in message:
            raise InputError(path, "FASTQ record header must start with '@'", line=line) from None
        if incomplete is not None and not (len(incomplete) > 2 and incomplete[2].startswith("+")):
            problem = "FASTQ record is truncated or has no '+' line"
        elif incomplete is not None or "differ" in message:
            problem = "FASTQ quality string and sequence differ in length"
        else:
            problem = message.split(": ", 1)[-1]
        # The record being read when dnaio stopped is the one after the last it returned.
        record = _header_id(path, _header_line(path, file_format, index + (last is not None)))
        raise InputError(path, problem, record=record, line=line) from None


def _quoted_after(message: str, marker: str) -> str:
    """The text that a dnaio message quotes (as a Python literal) after `marker`."""
    quoted = message.rsplit(marker, 1)[-1]
    try:
        return str(ast.literal_eval(quoted))
    except (ValueError, SyntaxError):
        return quoted


def _header_line(path, file_format: str, index: int) -> int | None:
    """Line number of the header of record `index` (0-based), by a scan of the file's lines: only
    for error messages, so the reading itself need not count lines."""
    raw, stream = _open_binary(path)
    with raw, stream:
        headers, number = -1, 0
        fastq_line = 0  # in FASTQ a header is every fourth non-blank line (a quality may start with '@')
        for number, text in enumerate(stream, start=1):
            if file_format == "fastq":
                if not text.strip():
                    continue
                is_header, fastq_line = fastq_line % 4 == 0, fastq_line + 1
            else:
                is_header = text.startswith(b">")
            headers += is_header
            if is_header and headers == index:
                return number
    return None


def _header_id(path, line: int | None) -> str | None:
    """The sequence ID on a header line."""
    if line is None:
        return None
    raw, stream = _open_binary(path)
    with raw, stream:
        for number, text in enumerate(stream, start=1):
            if number == line:
                words = text[1:].decode("latin-1").split()
                return words[0] if words else None
    return None


def _decode_header(path, text: bytes, line: int) -> tuple[str, str]:
    """The ID and the whole header (after '>' or '@') of a header line."""
    try:
        header = text[1:].decode("utf-8")
    except UnicodeDecodeError:
        header = text[1:].decode("latin-1")  # the usual 8-bit encoding of older FASTA files
    return _record_id(path, header, lambda: line), header.strip()


def _record_id(path, header: str, line) -> str:
    """A header's sequence ID as Biopython reads it: its first word, after any leading whitespace.
    A NUL byte is refused: it would end the ID in C readers and tools downstream. `line()` gives
    the header's line number, asked for only for an error."""
    if "\0" in header:
        raise InputError(path, "a NUL byte (0x00) in the header", line=line())
    words = header.split(maxsplit=1)
    if not words:
        raise InputError(path, "header has no sequence ID", line=line())
    return words[0]


def _ascii_sequence(path, text: bytes, record_id: str, line: int) -> str:
    if not text.isascii() or b"\x00" in text:
        bad = next(byte for byte in text if byte >= 0x80 or byte == 0)
        raise InputError(path, f"not a text FASTA or FASTQ file: byte 0x{bad:02x} in a sequence line",
                         record=record_id, line=line)
    return text.decode("ascii")


def _parse_fasta_lines(path, stream) -> Iterator[tuple[str, str, str]]:
    record_id = header = None
    parts: list[str] = []
    for number, text in enumerate(stream, start=1):
        text = text.rstrip(b"\r\n")
        if text.startswith(b">"):
            if record_id is not None:
                yield record_id, header, "".join(parts)
            record_id, header = _decode_header(path, text, number)
            parts = []
        elif text.strip():
            parts.append(_ascii_sequence(path, text.strip(), record_id, number))
    if record_id is not None:
        yield record_id, header, "".join(parts)


def _parse_fastq_lines(path, stream) -> Iterator[tuple[str, str, str]]:
    """FASTQ, also with sequence and quality wrapped over several lines (the sequence ends at the
    '+' line; the quality at as many characters as the sequence has)."""
    lines = enumerate(stream, start=1)
    for number, text in lines:
        text = text.rstrip(b"\r\n")
        if not text.strip():
            continue
        if not text.startswith(b"@"):
            raise InputError(path, "FASTQ record header must start with '@'", line=number)
        record_id, header = _decode_header(path, text, number)
        sequence: list[str] = []
        for number, text in lines:
            text = text.rstrip(b"\r\n")
            if text.startswith(b"+"):
                break
            sequence.append(_ascii_sequence(path, text.strip(), record_id, number))
        else:
            raise InputError(path, "FASTQ record is truncated or has no '+' line", record=record_id)
        length, quality = sum(map(len, sequence)), 0
        while quality < length:
            number, text = next(lines, (number, None))
            if text is None:
                break
            quality += len(text.rstrip(b"\r\n"))
        if quality != length:
            raise InputError(path, "FASTQ quality string and sequence differ in length", record=record_id)
        yield record_id, header, "".join(sequence)


def _byte_table(true_for: str) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[np.frombuffer(true_for.encode(), dtype=np.uint8)] = True
    return table


_IS_NUCLEOTIDE = _byte_table("ACGTUNRYSWKMBDHVacgtunryswkmbdhv")  # and the IUPAC codes; U is read as T
IS_ACGT = _byte_table("ACGTacgt")
_U_TO_T_BYTES = np.arange(256, dtype=np.uint8)
_U_TO_T_BYTES[[ord("U"), ord("u")]] = [ord("T"), ord("t")]


# Amino acids that no nucleotide notation uses: a sequence refused for one of these is likely protein.
_AMINO_ACID_ONLY = _byte_table("EFILPQefilpq*")
# IUPAC codes for two or more bases (not N). Real DNA has few of them; a protein made only of
# letters that happen to be IUPAC codes (A, C, G, T, R, Y, S, W, K, M, B, D, H, V, N) has mostly these.
_IS_MULTIBASE_CODE = _byte_table("RYSWKMBDHVryswkmbdhv")
PROTEIN_LIKE_MIN_LENGTH = 20
PROTEIN_LIKE_CODE_FRACTION = 0.25


def check_nucleotides(path, ids: list[str], sequences: pa.Array) -> pa.LargeStringArray:
    """`sequences` with U read as T; InputError naming the record and position of the first
    character that is not a nucleotide or IUPAC code."""
    offsets, data = string_bytes(sequences)
    valid = _IS_NUCLEOTIDE[data]
    if not valid.all():
        position = int(np.argmin(valid))
        row = int(np.searchsorted(offsets, position, side="right")) - 1
        shown = chr(data[position]).encode("unicode_escape").decode()
        hint = (" (it looks like a protein sequence: VirNucPro classifies DNA or RNA)"
                if _AMINO_ACID_ONLY[data[position]] else "")
        raise InputError(path, f"character '{shown}' at position {position - offsets[row] + 1} is not a nucleotide "
                         f"or IUPAC code{hint}", record=ids[row])
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(_U_TO_T_BYTES[data]))


def protein_like(sequences: pa.Array) -> np.ndarray:
    """Per sequence, whether it looks like protein written in letters that are all IUPAC codes:
    at least `PROTEIN_LIKE_MIN_LENGTH` letters, more than `PROTEIN_LIKE_CODE_FRACTION` of them
    codes for two or more bases. Such input is not refused (it is valid IUPAC), but warned about."""
    offsets, data = string_bytes(sequences)
    codes = np.r_[0, np.cumsum(_IS_MULTIBASE_CODE[data])][offsets]
    lengths = np.diff(offsets)
    return (lengths >= PROTEIN_LIKE_MIN_LENGTH) & (np.diff(codes) > PROTEIN_LIKE_CODE_FRACTION * lengths)


def read_sequences(path: str | os.PathLike) -> Iterator[SequenceRecord]:
    """Yield the checked records of a small FASTA or FASTQ file (genomes, training inputs, tests).

    The record ID is the first word of the header, as in Biopython. Raises `InputError` for an
    empty file, a file that is neither FASTA nor FASTQ, a record without an ID, duplicate IDs and
    characters that are not nucleotides. It keeps every ID in memory to find duplicates; the
    pipeline's stages read sample files part by part instead (`virnucpro.stages.partition`).
    """
    seen: set[str] = set()
    for batch in read_record_batches(path, batch_records=256):
        sequences = check_nucleotides(path, batch.ids, pa.array(batch.sequences, pa.large_string())).to_pylist()
        for record_id, header, sequence in zip(batch.ids, batch.headers, sequences):
            if record_id in seen:
                raise InputError(path, "duplicate sequence ID (IDs must be unique)", record=record_id)
            seen.add(record_id)
            yield SequenceRecord(record_id, sequence, header.strip()[len(record_id) :].strip())


def fasta_text(ids: list[str], sequences: list[str], line_width: int | None = None) -> str:
    """FASTA records as text; `line_width` wraps sequences like Biopython's writer (60)."""
    if line_width is None or all(len(sequence) <= line_width for sequence in sequences):
        return "".join(f">{record_id}\n{sequence}\n" for record_id, sequence in zip(ids, sequences))
    return "".join(
        f">{record_id}\n" + "".join(sequence[i : i + line_width] + "\n" for i in range(0, len(sequence), line_width))
        for record_id, sequence in zip(ids, sequences))
