"""Reading sequence files (FASTA or FASTQ, plain or compressed) and writing outputs atomically.

Every problem in an input file is reported as an `InputError` that names the file, the record
and what is wrong, so that a user can fix the input instead of guessing.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Nucleotides and the IUPAC ambiguity codes, in both cases. U is accepted and read as T.
_INVALID_NUCLEOTIDE = re.compile(r"[^ACGTUNRYSWKMBDHVacgtunryswkmbdhv]")
_U_TO_T = str.maketrans("Uu", "Tt")

_COMPRESSION_MAGIC = (
    (b"\x1f\x8b", gzip.open),
    (b"\xfd7zXZ\x00", lzma.open),
    (b"BZh", bz2.open),
)


class InputError(ValueError):
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


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a text file that may be gzip, xz or bzip2 compressed; line endings become '\\n'."""
    with open(path, "rb") as probe:
        head = probe.read(6)
    opener = next((open_fn for magic, open_fn in _COMPRESSION_MAGIC if head.startswith(magic)), None)
    binary = opener(path, "rb") if opener else open(path, "rb")
    return io.TextIOWrapper(binary, encoding="utf-8-sig", newline=None)  # -sig: a byte-order mark is skipped


def read_sequences(path: str | os.PathLike) -> Iterator[SequenceRecord]:
    """Yield the records of a FASTA or FASTQ file after checking them.

    The record ID is the first word of the header, as in Biopython. Raises `InputError` for an
    empty file, a file that is neither FASTA nor FASTQ, a record without an ID, duplicate IDs and
    characters that are not nucleotides.
    """
    seen: set[str] = set()
    try:
        with open_text(path) as handle:
            first_line, first = _first_content_line(handle)
            if first is None:
                raise InputError(path, "the file is empty: no FASTA or FASTQ records")
            if first.startswith(">"):
                records = _parse_fasta(path, handle, first, first_line)
            elif first.startswith("@"):
                records = _parse_fastq(path, handle, first, first_line)
            else:
                shown = first[:40].encode("unicode_escape").decode()
                raise InputError(path, f"not a FASTA or FASTQ file: the first line starts with '{shown}'", line=first_line)
            for record in records:
                if record.id in seen:
                    raise InputError(path, "duplicate sequence ID (IDs must be unique)", record=record.id)
                seen.add(record.id)
                yield record
    except UnicodeDecodeError as error:
        raise InputError(path, f"not a text FASTA or FASTQ file ({error.reason} at byte {error.start})") from None
    except (EOFError, OSError, lzma.LZMAError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise InputError(path, f"cannot be read: {error}") from None


def _first_content_line(handle: io.TextIOBase) -> tuple[int, str | None]:
    for number, line in enumerate(handle, start=1):
        if line.strip():
            return number, line.rstrip("\n")
    return 0, None


def _parse_header(path, header: str, line: int) -> tuple[str, str]:
    words = header[1:].split(maxsplit=1)
    if not words:
        raise InputError(path, "header has no sequence ID", line=line)
    return words[0], words[1].strip() if len(words) > 1 else ""


def _checked_sequence(path, record_id: str, sequence: str) -> str:
    bad = _INVALID_NUCLEOTIDE.search(sequence)
    if bad:
        shown = bad.group().encode("unicode_escape").decode()
        raise InputError(
            path, f"character '{shown}' at position {bad.start() + 1} is not a nucleotide or IUPAC code", record=record_id
        )
    return sequence.translate(_U_TO_T)


def _parse_fasta(path, handle, first: str, first_line: int) -> Iterator[SequenceRecord]:
    record_id, description = _parse_header(path, first, first_line)
    parts: list[str] = []
    for number, line in enumerate(handle, start=first_line + 1):
        line = line.strip()
        if line.startswith(">"):
            yield SequenceRecord(record_id, _checked_sequence(path, record_id, "".join(parts)), description)
            record_id, description = _parse_header(path, line, number)
            parts = []
        elif line:
            parts.append(line)
    yield SequenceRecord(record_id, _checked_sequence(path, record_id, "".join(parts)), description)


def _parse_fastq(path, handle, first: str, first_line: int) -> Iterator[SequenceRecord]:
    lines = iter(handle)
    header, number = first, first_line
    while header is not None:
        if not header.startswith("@"):
            raise InputError(path, "FASTQ record header must start with '@'", line=number)
        record_id, description = _parse_header(path, header, number)
        sequence = next(lines, "").strip()
        plus = next(lines, "")
        quality = next(lines, "").strip()
        if not plus.startswith("+"):
            raise InputError(path, "FASTQ record is truncated or has no '+' line", record=record_id)
        if len(quality) != len(sequence):
            raise InputError(path, "FASTQ quality string and sequence differ in length", record=record_id)
        yield SequenceRecord(record_id, _checked_sequence(path, record_id, sequence), description)
        number += 4
        header = None
        for line in lines:
            if line.strip():
                header = line.strip()
                break
            number += 1


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path that replaces `path` only when the block succeeds.

    A job that fails or is killed therefore never leaves a partial file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "w"):
    """Open `path` for writing through `atomic_path`."""
    with atomic_path(path) as temporary, open(temporary, mode) as handle:
        yield handle


def write_fasta_record(handle, record_id: str, sequence: str, line_width: int | None = None) -> None:
    """Write one FASTA record; `line_width` wraps the sequence like Biopython's writer (60)."""
    if line_width is None or len(sequence) <= line_width:
        handle.write(f">{record_id}\n{sequence}\n")
        return
    lines = "\n".join(sequence[i : i + line_width] for i in range(0, len(sequence), line_width))
    handle.write(f">{record_id}\n{lines}\n")


def read_fasta_simple(path: str | os.PathLike) -> Iterator[SequenceRecord]:
    """Read a FASTA file that this pipeline wrote itself (one trusted record per header)."""
    record_id, parts = None, []
    with open(path) as handle:
        for line in handle:
            if line.startswith(">"):
                if record_id is not None:
                    yield SequenceRecord(record_id, "".join(parts))
                record_id, parts = line[1:].strip(), []
            else:
                parts.append(line.strip())
    if record_id is not None:
        yield SequenceRecord(record_id, "".join(parts))
