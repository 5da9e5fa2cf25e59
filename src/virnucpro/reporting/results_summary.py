"""What a run found, for people: a summary table per sample, one for the run, and their figures.

The sample summary (`results/<sample>/summary.tsv`) has one row per measure (`measure`, `value`,
`share`): the reads in, classified, called virus and others, not classified by reason; chunks,
classified and viral chunks, frames; the sequences of several chunks, those of them with a viral
region and their regions (a sequence of one chunk, a short read, is its own region when it is
called virus: counting those would repeat the virus count); the expected length and the models used, with the demonstration-model note when it applies.
`share` is of the reads for counts of reads, of the chunks for counts of chunks. It is made from
`read_predictions.parquet` in one pass over a few of its columns, batch by batch, together with
the histograms of the reads' scores.

The run summary (`results/run_summary.tsv`) puts the samples side by side, one column each.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from virnucpro.io.atomic import save_figure
from virnucpro.io.atomic import atomic_output
from virnucpro.reporting import figures, html_pages

SCORE_BINS = np.linspace(0.0, 1.0, 51)
_BATCH_ROWS = 1 << 20
# Reasons a read is not classified (virnucpro.stages.consensus, virnucpro.stages.translation), always listed; a
# read whose chunks failed for several reasons counts under their combination.
REASONS = ("empty_sequence", "too_short", "below_min_codons", "too_ambiguous", "no_stop_free_frame")
_COLUMNS = ["call", "reason", "length", "chunks", "frames", "classified_chunks", "viral_chunks", "viral_regions",
            "score_virus", "score_others"]


@dataclass(frozen=True)
class SampleSummary:
    sample: str
    rows: list[tuple[str, object, float | None]]  # (measure, value, share)
    histograms: dict[tuple[str, str], np.ndarray]  # (score column, call) -> counts over SCORE_BINS

    def value(self, measure: str):
        return next(value for name, value, _ in self.rows if name == measure)


def summarize_sample(sample: str, read_table_path: str | os.PathLike, models: dict[str, str],
                     expected_length: int, note: str | None = None) -> SampleSummary:
    """The summary of one sample's `read_predictions.parquet`; `models` names the models used."""
    counts: Counter = Counter()
    reasons: Counter = Counter()
    histograms = {(score, call): np.zeros(len(SCORE_BINS) - 1, dtype=np.int64)
                  for score in ("score_virus", "score_others") for call in ("virus", "others")}
    for batch in pq.ParquetFile(read_table_path).iter_batches(batch_size=_BATCH_ROWS, columns=_COLUMNS):
        call = batch.column("call")
        counts["reads"] += batch.num_rows
        for name in ("length", "chunks", "frames", "classified_chunks", "viral_chunks"):
            counts[name] += int(pc.sum(batch.column(name)).as_py() or 0)
        several = pc.greater(batch.column("chunks"), 1)
        counts["multi_chunk"] += int(pc.sum(several).as_py() or 0)
        counts["multi_chunk_with_regions"] += int(pc.sum(pc.and_(several, pc.greater(batch.column("viral_regions"), 0)))
                                                  .as_py() or 0)
        counts["multi_chunk_regions"] += int(pc.sum(batch.column("viral_regions").filter(several)).as_py() or 0)
        for value in pc.value_counts(call).to_pylist():
            counts[value["values"] or "unclassified"] += value["counts"]
        reasons.update({value["values"]: value["counts"]
                        for value in pc.value_counts(batch.column("reason").drop_null()).to_pylist()})
        for label in ("virus", "others"):
            chosen = pc.equal(call, label).fill_null(False)
            for score in ("score_virus", "score_others"):
                values = batch.column(score).filter(chosen).to_numpy(zero_copy_only=False)
                histograms[(score, label)] += np.histogram(values, SCORE_BINS)[0]

    def of_reads(count: int) -> float | None:
        return count / counts["reads"] if counts["reads"] else None

    def of_chunks(count: int) -> float | None:
        return count / counts["chunks"] if counts["chunks"] else None

    classified = counts["virus"] + counts["others"]
    rows = [("sample", sample, None), ("reads", counts["reads"], None), ("bases", counts["length"], None),
            ("classified", classified, of_reads(classified)),
            ("virus", counts["virus"], of_reads(counts["virus"])),
            ("others", counts["others"], of_reads(counts["others"])),
            ("unclassified", counts["unclassified"], of_reads(counts["unclassified"]))]
    for reason in list(REASONS) + sorted(set(reasons) - set(REASONS)):
        rows.append((f"unclassified_{reason}", reasons[reason], of_reads(reasons[reason])))
    rows += [("chunks", counts["chunks"], None),
             ("classified_chunks", counts["classified_chunks"], of_chunks(counts["classified_chunks"])),
             ("viral_chunks", counts["viral_chunks"], of_chunks(counts["viral_chunks"])),
             ("frames", counts["frames"], None),
             ("sequences_of_several_chunks", counts["multi_chunk"], of_reads(counts["multi_chunk"])),
             ("of_which_with_viral_regions", counts["multi_chunk_with_regions"],
              of_reads(counts["multi_chunk_with_regions"])),
             ("their_viral_regions", counts["multi_chunk_regions"], None),
             ("expected_length", expected_length, None)]
    rows += [(f"model_{name}", path, None) for name, path in models.items()]
    if note:
        rows.append(("note", note, None))
    return SampleSummary(sample, rows, histograms)


def _share(share: float | None) -> str:
    return "" if share is None else f"{share:.4f}"


def write_sample_summary(summary: SampleSummary, table_path, figure_path) -> None:
    with atomic_output(table_path) as out:
        out.write("measure\tvalue\tshare\n")
        out.writelines(f"{measure}\t{value}\t{_share(share)}\n" for measure, value, share in summary.rows)
    save_figure(figures.score_distribution(summary.sample, SCORE_BINS, summary.histograms), figure_path)


def read_sample_summary(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    with open(path, newline="") as handle:
        return [(row["measure"], row["value"], row["share"]) for row in csv.DictReader(handle, delimiter="\t")]


def write_run_summary(samples: Sequence[str], summary_paths: Sequence[str | os.PathLike], table_path, figure_path,
                      html_path, note: str | None = None) -> None:
    """The samples side by side: a table, the calls per sample, and a page for the report."""
    summaries = [read_sample_summary(path) for path in summary_paths]
    measures = list(dict.fromkeys(measure for summary in summaries for measure, _, _ in summary))
    values = [{measure: value for measure, value, _ in summary} for summary in summaries]
    shares = [{measure: share for measure, _, share in summary} for summary in summaries]
    with atomic_output(table_path) as out:
        out.write("\t".join(["measure", *samples]) + "\n")
        out.writelines("\t".join([measure, *(row.get(measure, "") for row in values)]) + "\n" for measure in measures)
    counts = [{measure: int(row[measure]) for measure in row if measure in ("virus", "others")
               or (measure.startswith("unclassified_") and int(row[measure]))} for row in values]
    save_figure(figures.calls_per_sample(list(samples), counts), figure_path)

    def cell(index: int, measure: str) -> str:
        value, share = values[index].get(measure, ""), shares[index].get(measure, "")
        if value.isdigit() and len(value) > 3:
            value = f"{int(value):,}"
        return f"{value} ({float(share):.1%})" if share else value

    rows = [[measure.replace("_", " "), *(cell(index, measure) for index in range(len(samples)))]
            for measure in measures if measure not in ("sample", "note")]
    body = (html_pages.paragraph(note, "Note:") if note else "") + html_pages.table(["", *samples], rows)
    with atomic_output(html_path) as out:
        out.write(html_pages.page("Run summary", body))
