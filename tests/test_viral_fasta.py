"""Stage 10: the viral sequences and regions as FASTA, checked with Biopython against the input."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from Bio import SeqIO

from virnucpro.io.schemas import READ_PREDICTION_SCHEMA, REGION_COLUMNS
from virnucpro.stages import viral_fasta
from virnucpro.stages.viral_fasta import write_viral_fasta


def read_row(read_id, length, call, regions=0):
    return {"sample": "s", "read_index": 0, "read_id": read_id, "length": length, "ambiguous_bases": 0,
            "chunks": 1, "frames": 1 if call else 0, "call": call, "is_virus": call == "virus" if call else None,
            "score_virus": 0.9 if call else None, "score_others": 0.1 if call else None, "best_frame": None,
            "reason": None if call else "too_short", "classified_chunks": 1, "viral_chunks": 1,
            "viral_chunk_fraction": 1.0 if call else None, "viral_regions": regions, "expected_length": 300,
            "classifier": "c"}


@pytest.fixture
def sample(tmp_path, data_dir):
    """A FASTA as users have them (wrapped, lower case in places) with a phage, a host contig with a
    lambda stretch in two regions, a phage also with a region, a short read and an empty record."""
    from virnucpro.io.sequences import read_sequences

    phage = next(read_sequences(data_dir / "lambda_virus.fa.gz")).sequence[:5000]
    host = next(read_sequences(data_dir / "Klebs_HS11286.fna.xz")).sequence[:9000]
    contig = host[:3000] + phage[:2000].lower() + host[3000:6000]
    records = [("phage1", "a phage", phage), ("contig7", "host with a prophage", contig),
               ("read3", "", "ACGTACGTAC"), ("empty", "nothing", ""), ("phage2", "", phage[1000:4000].lower())]
    with open(tmp_path / "input.fa", "w") as out:
        for record_id, description, sequence in records:
            out.write(f">{record_id} {description}\n" + "".join(sequence[i:i + 70] + "\n"
                                                           for i in range(0, len(sequence), 70)))
    rows = [read_row("phage1", 5000, "virus"), read_row("contig7", len(contig), "provirus", regions=3),
            read_row("read3", 10, "others"), read_row("empty", 0, None), read_row("phage2", 3000, "virus", 1)]
    rule = {"preset": "default", "min_score_virus": 0.0, "min_viral_chunk_fraction": 0.5, "min_provirus_length": 1000}
    schema = READ_PREDICTION_SCHEMA.with_metadata({"virnucpro.calls": json.dumps(rule)})
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / "reads.parquet")
    regions = [("contig7", len(contig), 1, 2951, 4200, 5, 9, 5, 1250, 0.8),
               ("contig7", len(contig), 2, 4401, 5500, 12, 14, 3, 750, 0.7),  # fewer viral bases than needed
               ("contig7", len(contig), 3, 5501, 6600, 16, 20, 5, 1100, 0.7),
               ("phage2", 3000, 1, 1, 3000, 1, 12, 12, 3000, 0.9)]
    (tmp_path / "regions.tsv").write_text("\t".join(REGION_COLUMNS) + "\n" + "".join(
        "\t".join(map(str, row)) + "\n" for row in regions))
    return tmp_path


def write(directory):
    return write_viral_fasta(directory / "input.fa", directory / "reads.parquet", directory / "regions.tsv",
                             directory / "viral_sequences.fna", directory / "viral_regions.fna")


@pytest.mark.parametrize("record_batch", [256, 2])
def test_viral_sequences_and_regions_are_cut_from_the_input_byte_for_byte(sample, monkeypatch, record_batch):
    monkeypatch.setattr(viral_fasta, "RECORD_BATCH", record_batch)
    counts = write(sample)
    assert counts == {"records": 5, "viral_sequences": 2, "viral_regions": 2}
    given = {record.id: str(record.seq) for record in SeqIO.parse(sample / "input.fa", "fasta")}
    sequences = list(SeqIO.parse(sample / "viral_sequences.fna", "fasta"))
    assert [record.id for record in sequences] == ["phage1", "phage2"]
    for record in sequences:
        assert str(record.seq) == given[record.id]
        assert f"call=virus score_virus=0.9000 score_others=0.1000 length={len(record.seq)}" in record.description
    regions = list(SeqIO.parse(sample / "viral_regions.fna", "fasta"))
    # only the long enough regions of the provirus, not those of a virus, with geNomad's provirus names
    assert [record.id for record in regions] == ["contig7|provirus_2951_4200", "contig7|provirus_5501_6600"]
    assert str(regions[0].seq) == given["contig7"][2950:4200] and str(regions[1].seq) == given["contig7"][5500:6600]
    assert "region=1 sequence_length=8000 call=provirus viral_chunks=5 viral_bases=1250 mean_score_virus=0.8000" in regions[0].description


def test_a_read_table_of_another_input_is_an_error_and_leaves_no_output(sample):
    (sample / "input.fa").write_text(">phage1\nACGT\n>other\nACGT\n")
    with pytest.raises(ValueError, match="does not list the records of .*input.fa in their order"):
        write(sample)
    assert not (sample / "viral_sequences.fna").exists() and not (sample / "viral_regions.fna").exists()
