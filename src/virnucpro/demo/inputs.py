"""The data behind the built-in classifier and the demo input, from `shared/data`.

`training-inputs`: the viral training set is the lambda genome and the 10,000 real lambda reads of
`reads_1.fq.gz`; the host set is the Klebsiella chromosome and plasmids. So that held-out lambda
regions are not seen through reads that overlap them, each read is placed on the genome (exact
k-mer seeds voting for one diagonal) and written with `origin=<genome>:<position>`; reads that
cannot be placed are left out.

`demo-input`: after training, reads from the held-out regions only: real lambda reads placed there,
and reads simulated from the held-out Klebsiella regions.

    python -m virnucpro.demo.inputs training-inputs --data ../shared/data --out resources/training
    python -m virnucpro.demo.inputs demo-input --data ../shared/data --training resources/training \\
        --held-out results/training/expected_length_300/held_out_regions.tsv --out resources/demo/demo_reads.fa
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from virnucpro.demo.simulate import write_reads
from virnucpro.io.ids import parse_origin
from virnucpro.io.sequences import read_sequences
from virnucpro.stages.translation import reverse_complement

SEED_LENGTH = 16
MIN_SEED_VOTES = 3


def seed_index(genome: str, k: int = SEED_LENGTH) -> dict[str, int]:
    """Position of every k-mer that occurs once in the genome."""
    counts = Counter(genome[i : i + k] for i in range(len(genome) - k + 1))
    return {genome[i : i + k]: i for i in range(len(genome) - k + 1) if counts[genome[i : i + k]] == 1}


def place_read(read: str, index: dict[str, int], k: int = SEED_LENGTH) -> int | None:
    """0-based leftmost genome position of a read (either strand), or None if the seeds disagree."""
    votes: Counter = Counter()
    for strand in (read.upper(), reverse_complement(read.upper())):
        for offset in range(len(strand) - k + 1):
            position = index.get(strand[offset : offset + k])
            if position is not None:
                votes[position - offset] += 1
    if not votes:
        return None
    (diagonal, count), *rest = votes.most_common(2)
    if count < MIN_SEED_VOTES or (rest and rest[0][1] == count) or diagonal < 0:
        return None
    return diagonal


def training_inputs(data: Path, out: Path) -> None:
    genome = next(read_sequences(data / "lambda_virus.fa.gz"))
    index = seed_index(genome.sequence.upper())
    placed = []
    for read in read_sequences(data / "reads_1.fq.gz"):
        position = place_read(read.sequence, index)
        if position is not None and position + len(read.sequence) <= len(genome.sequence):
            placed.append((read.id, f"origin={genome.id}:{position + 1}", read.sequence))
    count = write_reads(placed, out / "lambda_reads_placed.fa.gz")
    print(f"placed {count} of 10,000 lambda reads on {genome.id}")


def demo_input(data: Path, training: Path, held_out_table: Path, out: Path, reads_per_label: int, seed: int) -> None:
    held_out = {}
    for line in held_out_table.read_text().splitlines()[1:]:
        region, label, _ = line.split("\t")
        source, index = region.rsplit(":", 1)
        held_out.setdefault(label, []).append((source, int(index)))
    region_length = _region_length(held_out_table)
    rng = np.random.default_rng(seed)

    viral = []
    for read in read_sequences(training / "lambda_reads_placed.fa.gz"):
        source, position = parse_origin(read.description)
        if (source, (position - 1 + len(read.sequence) // 2) // region_length) in held_out.get("viral", []):
            viral.append((read.id, f"lambda held-out region, origin={source}:{position}", read.sequence))
    viral = [viral[i] for i in sorted(rng.choice(len(viral), min(reads_per_label, len(viral)), replace=False))]

    genomes = {record.id: record.sequence for record in read_sequences(data / "Klebs_HS11286.fna.xz")}
    host_regions = held_out.get("host", [])
    host = []
    for number in range(reads_per_label):
        source, index = host_regions[rng.integers(len(host_regions))]
        region = genomes[source][index * region_length : (index + 1) * region_length]
        length = int(rng.integers(150, 301))
        start = int(rng.integers(0, max(1, len(region) - length)))
        read = region[start : start + length]
        if rng.random() < 0.5:
            read = reverse_complement(read.upper())
        position = index * region_length + start + 1
        host.append((f"kpneumoniae_{number:03d}", f"Klebsiella held-out region, simulated from {source}:{position}",
                     read))

    write_reads(viral + host, out)
    print(f"wrote {len(viral)} lambda and {len(host)} Klebsiella reads from held-out regions to {out}")


def _region_length(held_out_table: Path) -> int:
    import json

    metrics = json.loads((held_out_table.parent / "metrics.json").read_text())
    return int(metrics["region_length"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("training-inputs", help="place the lambda reads for the training table")
    prepare.add_argument("--data", type=Path, required=True)
    prepare.add_argument("--out", type=Path, required=True)
    demo = commands.add_parser("demo-input", help="reads from the held-out regions")
    demo.add_argument("--data", type=Path, required=True)
    demo.add_argument("--training", type=Path, required=True, help="folder of lambda_reads_placed.fa.gz")
    demo.add_argument("--held-out", type=Path, required=True, help="held_out_regions.tsv of the training run")
    demo.add_argument("--out", type=Path, required=True)
    demo.add_argument("--reads-per-label", type=int, default=100)
    demo.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    if args.command == "training-inputs":
        training_inputs(args.data, args.out)
    else:
        demo_input(args.data, args.training, args.held_out, args.out, args.reads_per_label, args.seed)


if __name__ == "__main__":
    main()
