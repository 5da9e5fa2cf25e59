"""Seeded read simulation from the lambda phage and Klebsiella genomes (demo input, benchmark workload).

Reads start at uniform random positions of a randomly chosen genome record (weighted by length),
come from either strand, and carry substitutions and N bases at the given rates. Each read is named
`<source>_<number>` (source `lambda` or `kpneumoniae`) and its header records where it came from,
also as `origin=<record>:<leftmost position>`, which the `train` target reads to hold out whole
genome regions.

    python -m virnucpro.demo.simulate --data ../shared/data --reads 1000000 --min-length 150 \\
        --max-length 150 --seed 1 --out benchmarks/workload_1M_150bp.fa.gz
"""

from __future__ import annotations

import argparse
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virnucpro.io.atomic import atomic_path
from virnucpro.io.sequences import read_sequences
from virnucpro.stages.translation import reverse_complement

SOURCES = {"lambda": "lambda_virus.fa.gz", "kpneumoniae": "Klebs_HS11286.fna.xz"}


@dataclass(frozen=True)
class Genome:
    source: str
    records: list[tuple[str, str]]  # (record id, upper-case sequence)


def load_genomes(data_dir: Path) -> list[Genome]:
    return [Genome(source, [(r.id, r.sequence.upper()) for r in read_sequences(data_dir / name)])
            for source, name in SOURCES.items()]


def simulate_reads(genomes: list[Genome], count: int, min_length: int, max_length: int, viral_fraction: float,
                   substitution_rate: float, n_rate: float, seed: int):
    """Yield (read id, description, sequence) tuples; the draws are vectorised for speed."""
    rng = np.random.default_rng(seed)
    from_genome = np.where(rng.random(count) < viral_fraction, 0, 1)
    lengths = rng.integers(min_length, max_length + 1, count)
    records = np.empty(count, dtype=np.int64)
    for index, genome in enumerate(genomes):
        sizes = np.array([len(seq) for _, seq in genome.records], dtype=np.float64)
        chosen = from_genome == index
        records[chosen] = rng.choice(len(sizes), size=int(chosen.sum()), p=sizes / sizes.sum())
    record_sizes = np.array([len(genomes[g].records[r][1]) for g, r in zip(from_genome, records)])
    lengths = np.minimum(lengths, record_sizes)
    starts = (rng.random(count) * (record_sizes - lengths + 1)).astype(np.int64)
    reverse = rng.random(count) < 0.5

    pieces = [genomes[g].records[r][1][s : s + n] for g, r, s, n in zip(from_genome, records, starts, lengths)]
    bases = np.frombuffer("".join(pieces).encode(), dtype=np.uint8).copy()
    substituted = rng.random(len(bases)) < substitution_rate
    bases[substituted] = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, int(substituted.sum()))]
    bases[rng.random(len(bases)) < n_rate] = ord("N")
    text = bases.tobytes().decode()
    offset = 0
    for number in range(count):
        g, n = from_genome[number], int(lengths[number])
        read = text[offset : offset + n]
        offset += n
        if reverse[number]:
            read = reverse_complement(read)
        record_id = genomes[g].records[records[number]][0]
        strand = "-" if reverse[number] else "+"
        start = int(starts[number]) + 1
        yield (f"{genomes[g].source}_{number:07d}", f"{record_id}:{start}-{start + n - 1}({strand}) "
               f"origin={record_id}:{start}", read)


def write_reads(reads, path: Path) -> int:
    count = 0
    with atomic_path(path) as temporary:
        with (gzip.open(temporary, "wt", compresslevel=1) if path.suffix == ".gz" else open(temporary, "w")) as out:
            for read_id, description, sequence in reads:
                out.write(f">{read_id} {description}\n{sequence}\n")
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with the shared genomes")
    parser.add_argument("--out", type=Path, required=True, help="FASTA output (.gz to compress)")
    parser.add_argument("--reads", type=int, required=True)
    parser.add_argument("--min-length", type=int, default=150)
    parser.add_argument("--max-length", type=int, default=150)
    parser.add_argument("--viral-fraction", type=float, default=0.5)
    parser.add_argument("--substitution-rate", type=float, default=0.002)
    parser.add_argument("--n-rate", type=float, default=0.0005)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    reads = simulate_reads(load_genomes(args.data), args.reads, args.min_length, args.max_length,
                           args.viral_fraction, args.substitution_rate, args.n_rate, args.seed)
    print(f"wrote {write_reads(reads, args.out)} reads to {args.out}")


if __name__ == "__main__":
    main()
