"""Stage 10: the viral sequences and regions as FASTA, cut from the input, for CheckV and the like.

- `viral_sequences.fna`: every sequence called `virus` in the read table, whole and as in the
  input, under its own ID; the header also gives the call, scores, length and share of viral chunks:
  `>r1 call=virus score_virus=0.9731 score_others=0.2210 length=812 viral_chunk_fraction=1.0000`
- `viral_regions.fna`: every viral region of a sequence called `provirus` (not itself called virus)
  with enough viral bases to make it one (the call rule's `min_provirus_length`), named as geNomad
  names proviruses, `<id>|provirus_<start>_<end>` with 1-based inclusive coordinates (as in `viral_regions.tsv`), so that a region's ID tells where it comes
  from and IDs stay unique: `>contig7|provirus_20001_26300 region=1 sequence_length=69000 ...`

Both are plain FASTA with each sequence on one line, like geNomad's `<prefix>_virus.fna` and
VirSorter2's `final-viral-combined.fa` (VirSorter2 appends `||full` or `||<n>_partial` instead; the
coordinates here are in the name itself). They are a small share of the input; compress them with
`gzip` if needed.

The input, the read table and the regions table are all in input order, so the three are read
side by side in one pass, a batch of records at a time: the memory is that of a batch of input
records (a 5 Mb contig is read whole), whatever the size of the input.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from virnucpro.io.atomic import atomic_paths
from virnucpro.io.schemas import REGION_COLUMNS
from virnucpro.io.sequences import read_record_batches

RECORD_BATCH = 256
_READ_COLUMNS = ["read_id", "call", "score_virus", "score_others", "length", "viral_chunk_fraction",
                 "viral_regions"]


def write_viral_fasta(input_path: str | os.PathLike, read_table: str | os.PathLike, regions_table: str | os.PathLike,
                      sequences_path: str | os.PathLike, regions_path: str | os.PathLike) -> dict[str, int]:
    """Write both files; returns the number of records in, and of sequences and regions written."""
    rows = pq.ParquetFile(read_table).iter_batches(65536, columns=_READ_COLUMNS)
    schema = pq.read_schema(read_table)
    min_length = json.loads(schema.metadata[b"virnucpro.calls"])["min_provirus_length"]
    held = pa.schema([schema.field(name) for name in _READ_COLUMNS]).empty_table()
    counts = {"records": 0, "viral_sequences": 0, "viral_regions": 0}
    with open(regions_table, encoding="utf-8") as regions_file, \
            atomic_paths([sequences_path, regions_path]) as (sequences_out, regions_out), \
            open(sequences_out, "w", encoding="utf-8") as sequences, open(regions_out, "w", encoding="utf-8") as regions:
        region_rows = _region_rows(regions_table, regions_file)
        for batch in read_record_batches(input_path, RECORD_BATCH):
            while held.num_rows < len(batch):
                more = next(rows, None)
                if more is None:
                    raise ValueError(f"{read_table} has {counts['records'] + held.num_rows} rows, "
                                     f"{input_path} has more records")
                held = pa.concat_tables([held, pa.Table.from_batches([more])])
            table, held = held.slice(0, len(batch)).to_pydict(), held.slice(len(batch))
            if table["read_id"] != batch.ids:
                raise ValueError(f"{read_table} does not list the records of {input_path} in their order "
                                 f"(from record {counts['records'] + 1})")
            # only the reads called virus or with regions need a look (most reads of a sample have neither)
            wanted = [index for index, (call, regions_of_read) in enumerate(zip(table["call"], table["viral_regions"]))
                      if call == "virus" or regions_of_read]
            for index in wanted:
                sequence = batch.sequences[index]
                row = {name: values[index] for name, values in table.items()}
                if row["call"] == "virus":
                    sequences.write(f">{row['read_id']} call=virus score_virus={row['score_virus']:.4f} "
                                    f"score_others={row['score_others']:.4f} length={row['length']} "
                                    f"viral_chunk_fraction={row['viral_chunk_fraction']:.4f}\n{sequence}\n")
                    counts["viral_sequences"] += 1
                for _ in range(row["viral_regions"]):
                    region = next(region_rows, None)
                    if region is None or region["sequence_id"] != row["read_id"]:
                        raise ValueError(f"{regions_table} does not list the viral regions of {row['read_id']}")
                    start, end = int(region["start"]), int(region["end"])
                    if row["call"] == "provirus" and int(region["viral_bases"]) >= min_length:
                        regions.write(f">{row['read_id']}|provirus_{start}_{end} region={region['region']} "
                                      f"sequence_length={row['length']} call={row['call']} "
                                      f"viral_chunks={region['viral_chunks']} viral_bases={region['viral_bases']} "
                                      f"mean_score_virus={float(region['mean_score_virus']):.4f}\n"
                                      f"{sequence[start - 1:end]}\n")
                        counts["viral_regions"] += 1
            counts["records"] += len(batch)
        if held.num_rows or next(rows, None) is not None:
            raise ValueError(f"{read_table} has more rows than {input_path} has records")
        if next(region_rows, None) is not None:
            raise ValueError(f"{regions_table} lists regions of sequences that have none in {read_table}")
    return counts


def _region_rows(path, lines) -> Iterator[dict[str, str]]:
    header = next(lines, "").rstrip("\n").split("\t")
    if tuple(header) != REGION_COLUMNS:
        raise ValueError(f"{path}: not a viral regions table (header {header})")
    for line in lines:
        yield dict(zip(REGION_COLUMNS, line.rstrip("\n").split("\t")))
