import itertools
import random
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest

from virnucpro.io.ids import FRAME_NAMES
from virnucpro.io.schemas import (CHUNK_SUMMARY_SCHEMA, FRAME_SCHEMA, REASON_NO_STOP_FREE_FRAME, REASON_TOO_AMBIGUOUS, REASON_TOO_SHORT)
from virnucpro.io.sequences import read_records, read_sequences
from virnucpro.io.tables import PartedTable
from virnucpro.stages.chunking import chunk_layout
from virnucpro.stages.translation import translate_chunks


@dataclass
class Frame:
    name: str
    protein: str
    nucleotide: str


@dataclass
class Translation:
    frames: list[Frame]
    ambiguous_bases: int
    reason: str | None


def translate(chunks: list[str], max_ambiguous_fraction: float = 1.0) -> list[Translation]:
    """translate_chunks' columns, chunk by chunk."""
    result = translate_chunks(pa.array(chunks, pa.string()), max_ambiguous_fraction)
    frames: list[list[Frame]] = [[] for _ in chunks]
    for chunk, frame, protein, nucleotide in zip(result.frame_chunk.tolist(), result.frame.tolist(),
                                                 result.protein.to_pylist(), result.nucleotide.to_pylist()):
        frames[chunk].append(Frame(FRAME_NAMES[frame], protein, nucleotide))
    assert result.frames.tolist() == [len(f) for f in frames]
    return [Translation(f, int(a), r) for f, a, r in zip(frames, result.ambiguous_bases, result.reason)]


def chunk_sequence(sequence: str, size: int) -> list[str]:
    layout = chunk_layout(np.array([len(sequence)]), size)
    return [sequence[start : start + length] for start, length in zip(layout.start.tolist(), layout.length.tolist())]

# The standard genetic code in NCBI's layout: codons in TCAG order of first, second, third base.
STANDARD_CODE = dict(
    zip(
        ("".join(codon) for codon in itertools.product("TCAG", repeat=3)),
        "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG",
    )
)
IUPAC = {
    "A": "A", "C": "C", "G": "G", "T": "T", "N": "ACGT", "R": "AG", "Y": "CT", "S": "CG",
    "W": "AT", "K": "GT", "M": "AC", "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG",
}
COMPLEMENT = str.maketrans("ACGTNRYSWKMBDHV", "TGCANYRSWMKVHDB")


def oracle_residue(codon: str) -> str:
    readings = {STANDARD_CODE["".join(bases)] for bases in itertools.product(*(IUPAC[b] for b in codon))}
    return readings.pop() if len(readings) == 1 else "X"


def oracle_frames(chunk: str) -> list[tuple[str, str, str]]:
    """VirNucPro's six-frame rule: (frame, protein, nucleotide) for every frame with codons and no stop."""
    forward = chunk.upper()
    reverse = forward.translate(COMPLEMENT)[::-1]
    frames = []
    for name, strand, offset in [("F1", forward, 0), ("F2", forward, 1), ("F3", forward, 2),
                                 ("R1", reverse, 0), ("R2", reverse, 1), ("R3", reverse, 2)]:
        codons = (len(strand) - offset) // 3
        protein = "".join(oracle_residue(strand[offset + 3 * i : offset + 3 * i + 3]) for i in range(codons))
        if protein and "*" not in protein:
            frames.append((name, protein, strand[offset : offset + 3 * codons + 1]))
    return frames


def frames_of(translation) -> list[tuple[str, str, str]]:
    return [(frame.name, frame.protein, frame.nucleotide) for frame in translation.frames]


def assert_matches_oracle(chunks: list[str]) -> int:
    """Compare translate_chunks with the oracle on `chunks`; return how many frames were kept."""
    kept = 0
    for chunk, translation in zip(chunks, translate(chunks), strict=True):
        expected = oracle_frames(chunk)
        assert frames_of(translation) == expected, chunk
        if expected:
            assert translation.reason is None
        else:
            assert translation.reason == (REASON_TOO_SHORT if len(chunk) < 3 else REASON_NO_STOP_FREE_FRAME)
        assert translation.ambiguous_bases == sum(base not in "ACGT" for base in chunk.upper())
        kept += len(expected)
    return kept


def test_oracle_code_table():
    assert len(STANDARD_CODE) == 64
    assert sorted(codon for codon, residue in STANDARD_CODE.items() if residue == "*") == ["TAA", "TAG", "TGA"]
    assert STANDARD_CODE["ATG"] == "M" and STANDARD_CODE["TGG"] == "W" and STANDARD_CODE["AGA"] == "R"


@pytest.mark.parametrize("name", ["test_with_orfs", "test_fixed_500bp"])
def test_identified_files_are_byte_identical_to_the_original(reference_dir, prepare, name):
    prepared = prepare(reference_dir / f"{name}.fa", 500)
    assert prepared.text("nucleotide_fasta") == (reference_dir / f"{name}_identified_nucleotide.fa").read_text()
    assert prepared.text("protein_fasta") == (reference_dir / f"{name}_identified_protein.faa").read_text()


def test_random_chunks_match_the_oracle():
    rng = random.Random(2024)
    uniform = ["".join(rng.choices("ACGT", k=rng.randint(1, 600))) for _ in range(1500)]
    short = ["".join(rng.choices("ACGT", k=rng.randint(1, 30))) for _ in range(1000)]
    # Stop codons and their reverse complements (TTA, CTA, TCA) all hold a T: few Ts, long open frames.
    stop_poor = ["".join(rng.choices("ACGT", weights=[10, 10, 10, 1], k=rng.randint(1, 600))) for _ in range(1500)]
    kept = assert_matches_oracle(uniform + short + stop_poor)
    assert kept > 5000


def test_lambda_genome_chunks_match_the_oracle(data_dir):
    [genome] = read_sequences(data_dir / "lambda_virus.fa.gz")
    chunks = chunk_sequence(genome.sequence, 300) + chunk_sequence(genome.sequence, 500)
    assert assert_matches_oracle(chunks) > 100


@pytest.fixture(scope="module")
def real_reads(data_dir) -> list[str]:
    return [record.sequence for record in read_sequences(data_dir / "reads_1.fq.gz")]


def test_acgt_reads_match_the_oracle(real_reads):
    chunks = [chunk for read in real_reads if set(read) <= set("ACGT") for chunk in chunk_sequence(read, 300)]
    assert len(chunks) > 3000
    assert assert_matches_oracle(chunks) > 1000


def test_reads_with_ambiguous_bases_match_the_ambiguity_aware_oracle(real_reads):
    chunks = [chunk for read in real_reads if "N" in read for chunk in chunk_sequence(read, 300)]
    assert len(chunks) > 5000
    assert assert_matches_oracle(chunks) > 1000


@pytest.mark.parametrize(
    ("chunk", "frame", "protein"),
    [
        ("GCN", "F1", "A"),  # every GCx is alanine
        ("NGC", "F1", "X"),
        ("TAN", "F1", "X"),  # TAT/TAC tyrosine, TAA/TAG stop: unknown, but not a stop
        ("NNN", "F1", "X"),
        ("NNN", "R1", "X"),
        ("TRA", "R1", "X"),  # reverse complement TYA: TTA leucine or TCA serine
        ("CTN", "F1", "L"),
        ("MGR", "F1", "R"),  # AGA, AGG, CGA, CGG: all arginine
        ("YTR", "F1", "L"),  # TTA, TTG, CTA, CTG: all leucine
        ("ATH", "F1", "I"),
    ],
)
def test_ambiguous_codon_translation(chunk, frame, protein):
    [translation] = translate([chunk])
    assert dict((f.name, f.protein) for f in translation.frames)[frame] == protein


@pytest.mark.parametrize("chunk", ["TAA", "TRA", "TAR"])
def test_ambiguous_codon_that_is_always_a_stop_removes_the_frame(chunk):
    [translation] = translate([chunk])
    assert "F1" not in [f.name for f in translation.frames]


def test_ambiguous_bases_keep_protein_and_nucleotide_in_register():
    chunk = "ATGGCNAAANNNTGGCATRYGGCT"
    [translation] = translate([chunk])
    frames = {f.name: f for f in translation.frames}
    assert frames["F1"].protein == "MAKXWHXA"
    assert frames["F1"].nucleotide == chunk  # 3 * 8 + 1 bases run past the end: up to the end
    for frame in translation.frames:
        offset = int(frame.name[1]) - 1
        codons = (len(chunk) - offset) // 3
        assert len(frame.protein) == codons
        assert len(frame.nucleotide) == min(3 * codons + 1, len(chunk) - offset)
    assert translation.ambiguous_bases == 6


def test_nucleotide_slice_is_one_base_longer_than_the_codons():
    # 12 bases: F1 has 4 codons and no base after them, F2 has 3 codons and one base after them,
    # F3 ends on the stop TAA.
    chunk = "ATGNNNGCTAAN"
    [translation] = translate([chunk])
    frames = {f.name: f for f in translation.frames}
    assert (frames["F1"].protein, frames["F1"].nucleotide) == ("MXAX", "ATGNNNGCTAAN")
    assert (frames["F2"].protein, frames["F2"].nucleotide) == ("XXL", "TGNNNGCTAA")
    assert "F3" not in frames


@pytest.mark.parametrize("chunk", ["A", "AC", "N", "nn"])
def test_chunks_shorter_than_a_codon_are_too_short(chunk):
    [translation] = translate([chunk], max_ambiguous_fraction=0.0)
    assert translation.frames == [] and translation.reason == REASON_TOO_SHORT
    assert translation.ambiguous_bases == sum(base in "Nn" for base in chunk)


@pytest.mark.parametrize("chunk", ["ATG", "TAA", "ATGC", "TTAG"])
def test_frames_without_a_codon_are_not_kept(chunk):
    # VirNucPro drops frames whose protein is empty; lengths 3 and 4 have such frames.
    [translation] = translate([chunk])
    assert translation.frames and all(frame.protein for frame in translation.frames)
    assert frames_of(translation) == oracle_frames(chunk)


def test_too_ambiguous_is_more_than_the_fraction():
    at_limit, over_limit = "NNNNNACGTA", "NNNNNNACGT"
    translations = translate([at_limit, over_limit], max_ambiguous_fraction=0.5)
    assert translations[0].reason is None and translations[0].frames
    assert translations[1].reason == REASON_TOO_AMBIGUOUS and translations[1].frames == []
    assert [t.ambiguous_bases for t in translations] == [5, 6]


def test_no_stop_free_frame():
    chunk = "CTAGTTAATTAGTAC"
    assert oracle_frames(chunk) == []
    [translation] = translate([chunk])
    assert translation.frames == [] and translation.reason == REASON_NO_STOP_FREE_FRAME


def test_lowercase_gives_the_same_frames_as_uppercase():
    rng = random.Random(5)
    upper = ["".join(rng.choices("ACGTN", weights=[10, 10, 10, 1, 1], k=rng.randint(1, 300))) for _ in range(500)]
    lower = [chunk.lower() for chunk in upper]
    mixed = ["".join(rng.choice([base, base.lower()]) for base in chunk) for chunk in upper]
    expected = translate(upper, max_ambiguous_fraction=0.2)
    assert translate(lower, max_ambiguous_fraction=0.2) == expected
    assert translate(mixed, max_ambiguous_fraction=0.2) == expected
    assert any(t.frames for t in expected) and any(t.reason == REASON_TOO_AMBIGUOUS for t in expected)


def test_results_keep_the_input_order_across_lengths():
    chunks = ["ATGAAA", "GCN", "ATGAAACCC", "AC", "ATGTTT"]
    assert translate(chunks) == [translate([chunk])[0] for chunk in chunks]


def test_identify_frames_tables_and_files(tmp_path, prepare):
    reads = {
        "ok": "ATGGCNAAATGGCAT",
        "short": "ac",
        "ambiguous": "NNNNNNACGT",
        "closed": "CTAGTTAATTAGTAC",
        "ok2": "atgaaacccggg",
    }
    (tmp_path / "reads.fa").write_text("".join(f">{name}\n{sequence}\n" for name, sequence in reads.items()))

    prepared = prepare(tmp_path / "reads.fa", 300)

    expected = [(index, name, frame, protein, nucleotide)
                for index, (name, sequence) in enumerate(reads.items()) if name.startswith("ok")
                for frame, protein, nucleotide in oracle_frames(sequence)]
    frames = PartedTable(prepared.frames)
    assert frames.schema.remove_metadata() == FRAME_SCHEMA
    assert frames.read(0, frames.num_rows).to_pydict() == {
        "read_index": [e[0] for e in expected], "chunk": [1] * len(expected),
        "frame": [FRAME_NAMES.index(e[2]) for e in expected],
        "protein": [e[3] for e in expected], "nucleotide": [e[4] for e in expected]}
    assert prepared.text("nucleotide_fasta") == "".join(f">{e[1]}_chunk_1{e[2]}\n{e[4]}\n" for e in expected)
    assert prepared.text("protein_fasta") == "".join(f">{e[1]}_chunk_1{e[2]}\n{e[3]}\n" for e in expected)
    summary = PartedTable(prepared.chunk_summary)
    assert summary.schema.remove_metadata() == CHUNK_SUMMARY_SCHEMA
    ok_frames = [len(oracle_frames(reads["ok"])), len(oracle_frames(reads["ok2"]))]
    assert summary.read(0, 5).to_pydict() == {
        "read_index": [0, 1, 2, 3, 4],
        "chunk": [1] * 5,
        "start": [0] * 5,
        "length": [15, 2, 10, 15, 12],
        "ambiguous_bases": [1, 0, 6, 0, 0],
        "frames": [ok_frames[0], 0, 0, 0, ok_frames[1]],
        "reason": [None, REASON_TOO_SHORT, REASON_TOO_AMBIGUOUS, REASON_NO_STOP_FREE_FRAME, None],
    }


def test_frames_do_not_depend_on_the_parts(data_dir, prepare):
    one, several = prepare(data_dir / "reads_1.fq.gz", 300), prepare(data_dir / "reads_1.fq.gz", 300, parts=5)
    for kind in ("frames", "chunk_summary"):
        whole, parted = PartedTable(getattr(one, kind)), PartedTable(getattr(several, kind))
        assert parted.read(0, parted.num_rows).equals(whole.read(0, whole.num_rows))
    for kind in ("nucleotide_fasta", "protein_fasta"):
        assert several.text(kind) == one.text(kind)
    path = several.directory / "frames.fa"
    path.write_text(several.text("nucleotide_fasta"))
    frame_ids = [record.id for record in read_records(path)]
    assert len(frame_ids) > 5000 and len(set(frame_ids)) == len(frame_ids)
    assert all(frame_id[-2:] in FRAME_NAMES for frame_id in frame_ids)


def test_frames_do_not_depend_on_the_translation_blocks(data_dir, prepare, monkeypatch):
    """Stage 2 reads its part a block of chunks at a time (and the blocks' read IDs only)."""
    import virnucpro.stages.translation

    whole = prepare(data_dir / "reads_1.fq.gz", 300, parts=2)
    monkeypatch.setattr(virnucpro.stages.translation, "TRANSLATION_BATCH_CHUNKS", 777)
    blocks = prepare(data_dir / "reads_1.fq.gz", 300, parts=2)
    for kind in ("nucleotide_fasta", "protein_fasta"):
        assert blocks.text(kind) == whole.text(kind)
    frames, expected = PartedTable(blocks.frames), PartedTable(whole.frames)
    assert frames.read(0, frames.num_rows).equals(expected.read(0, expected.num_rows))
