"""Viral regions of long sequences: runs of chunks called viral, with coordinates on the sequence.

A contig or genome is cut into many chunks, and one call per sequence says little about it (a
bacterial chromosome with a prophage is called `others` as a whole). Here each sequence also gets
the fraction of its classified chunks called viral, and its viral regions, in the spirit of the
provirus boundaries of geNomad and VirSorter2: a region is a maximal run of viral chunks. The
chunk calls are VirNucPro's (a chunk is viral when its highest virus score over its frames is at
least its highest others score, as in `prediction_results_highestscore.csv`).

- A chunk that could not be classified (no stop-free frame, too ambiguous) carries no evidence: it
  neither ends a region nor starts one, so a region may span it. An `others` chunk ends a region.
- Coordinates are 1-based and inclusive, like GFF and geNomad's: a region runs from the first base
  of its first viral chunk to the last base of its last viral chunk (chunks overlap, see
  `virnucpro.stages.chunking`, so a region's length is not the sum of its chunks').
- Its score is the mean, over its viral chunks, of their highest virus score; its viral bases are
  the summed lengths of its viral chunks (the evidence for it, whatever unclassified chunks it
  spans).

Everything works on the chunks of a block of whole sequences at a time, vectorised with NumPy, so
the memory is that of the block whatever the number of sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Regions:
    """The viral regions of a block of sequences, and per sequence its chunk counts."""

    classified_chunks: np.ndarray  # per sequence
    viral_chunks: np.ndarray  # per sequence
    regions: np.ndarray  # per sequence: number of viral regions
    sequence: np.ndarray  # per region: its sequence (index in the block)
    number: np.ndarray  # per region: 1, 2, ... along its sequence
    start: np.ndarray  # per region: 1-based first base
    end: np.ndarray  # per region: 1-based last base, inclusive
    first_chunk: np.ndarray  # per region: chunk number (from 1, as in the chunk IDs)
    last_chunk: np.ndarray
    region_viral_chunks: np.ndarray
    viral_bases: np.ndarray
    mean_score: np.ndarray


def viral_regions(sequences: int, chunk_sequence: np.ndarray, chunk_number: np.ndarray, chunk_start: np.ndarray,
                  chunk_length: np.ndarray, classified: np.ndarray, viral: np.ndarray,
                  score_virus: np.ndarray) -> Regions:
    """Regions of `sequences` sequences from their chunks, in order (sequence, then position).

    `chunk_sequence` is each chunk's sequence (0 to `sequences` - 1), `chunk_start` its 0-based
    start and `chunk_length` its length; `classified`, `viral` and `score_virus` (its highest virus
    score) matter only where `classified` is true.
    """
    kept = np.flatnonzero(np.asarray(classified, dtype=bool))
    sequence, is_viral = chunk_sequence[kept], np.asarray(viral, dtype=bool)[kept]
    # A region starts at a viral chunk whose previous classified chunk is not viral or belongs to
    # another sequence.
    continues = np.r_[False, is_viral[:-1] & (sequence[1:] == sequence[:-1])]
    region_of = (np.cumsum(is_viral & ~continues) - 1)[is_viral]  # per viral chunk, its region
    chunks = kept[is_viral]  # the viral chunks, region after region
    first = np.flatnonzero(np.diff(region_of, prepend=-1))  # per region, its first viral chunk
    count = np.diff(np.r_[first, len(chunks)])
    region_sequence = chunk_sequence[chunks[first]]
    regions_per_sequence = np.bincount(region_sequence, minlength=sequences)
    ends = chunk_start[chunks] + chunk_length[chunks]
    scores = np.asarray(score_virus, dtype=np.float64)[chunks]
    return Regions(
        classified_chunks=np.bincount(sequence, minlength=sequences),
        viral_chunks=np.bincount(sequence[is_viral], minlength=sequences),
        regions=regions_per_sequence,
        sequence=region_sequence,
        # numbered along their sequence, from 1
        number=np.arange(len(first)) - (np.cumsum(regions_per_sequence) - regions_per_sequence)[region_sequence] + 1,
        start=chunk_start[chunks[first]] + 1,
        end=np.maximum.reduceat(ends, first) if len(first) else ends,
        first_chunk=chunk_number[chunks[first]],
        last_chunk=chunk_number[chunks[first + count - 1]],
        region_viral_chunks=count,
        viral_bases=np.add.reduceat(chunk_length[chunks], first) if len(first) else chunk_length[chunks],
        mean_score=np.add.reduceat(scores, first) / count if len(first) else scores,
    )


def region_lines(regions: Regions, sequence_ids: list[str], sequence_lengths: np.ndarray) -> str:
    """The regions as rows of the regions table (REGION_COLUMNS, tab-separated)."""
    return "".join(
        f"{sequence_ids[s]}\t{sequence_lengths[s]}\t{n}\t{start}\t{end}\t{first}\t{last}\t{viral}\t{bases}\t"
        f"{score:.6f}\n"
        for s, n, start, end, first, last, viral, bases, score in zip(
            regions.sequence.tolist(), regions.number.tolist(), regions.start.tolist(), regions.end.tolist(),
            regions.first_chunk.tolist(), regions.last_chunk.tolist(), regions.region_viral_chunks.tolist(),
            regions.viral_bases.tolist(), regions.mean_score.tolist()))
