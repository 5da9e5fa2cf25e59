"""The data behind the built-in classifiers and the demo input, from `shared/data`.

Both classes are made the same way, so that nothing but the genome tells them apart: reads
simulated (`virnucpro.demo.simulate`) from the lambda genome (viral) and from the Klebsiella
chromosome and plasmids (host), with the same lengths, strands and error rates. The built-in
classifiers once learnt read length instead: their viral class was ~100-bp reads and their host
class full-length genome chunks.

`training-inputs`: the two training files, one per class, each read with `origin=<record>:<position>`
so that the `train` target holds out whole genome regions.

`demo-input`: after training, reads simulated the same way from the held-out regions only, as many
of each class.

    python -m virnucpro.demo.inputs training-inputs --data ../shared/data --out resources/training
    python -m virnucpro.demo.inputs demo-input --data ../shared/data \\
        --held-out results/training/expected_length_300/held_out_regions.tsv --out resources/demo/demo_reads.fa
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from virnucpro.demo.simulate import Genome, load_genomes, simulate_reads, write_reads

# The lengths of both classes, of training and demo reads alike: shorter than, about and longer
# than the chunk lengths 300 and 500, so that a classifier is tried on one and several chunks.
MIN_LENGTH, MAX_LENGTH = 100, 1000
SUBSTITUTION_RATE, N_RATE = 0.002, 0.0005
TRAINING_FILES = {"lambda": "lambda_reads_simulated.fa.gz", "kpneumoniae": "kpneumoniae_reads_simulated.fa.gz"}


def simulated_by_source(genomes: list[Genome], reads_per_source: int, seed: int) -> dict[str, list[tuple]]:
    """`reads_per_source` reads of each genome, all drawn the same way."""
    by_source = {}
    for offset, genome in enumerate(genomes):
        by_source[genome.source] = list(simulate_reads([genome], reads_per_source, MIN_LENGTH, MAX_LENGTH, 1.0,
                                                       SUBSTITUTION_RATE, N_RATE, seed + offset))
    return by_source


def training_inputs(data: Path, out: Path, reads_per_class: int, seed: int) -> None:
    for source, reads in simulated_by_source(load_genomes(data), reads_per_class, seed).items():
        count = write_reads(reads, out / TRAINING_FILES[source])
        print(f"wrote {count} {source} reads of {MIN_LENGTH}-{MAX_LENGTH} bases to {out / TRAINING_FILES[source]}")


def held_out_genomes(data: Path, held_out_table: Path) -> list[Genome]:
    """The held-out regions of each genome as records `<record>:<start>-<end>` (1-based)."""
    region_length = int(json.loads((held_out_table.parent / "metrics.json").read_text())["region_length"])
    regions = {}
    for line in held_out_table.read_text().splitlines()[1:]:
        region = line.split("\t")[0]
        record, index = region.rsplit(":", 1)
        regions.setdefault(record, []).append(int(index))
    held_out = []
    for genome in load_genomes(data):
        records = []
        for record, sequence in genome.records:
            for index in sorted(regions.get(record, [])):
                start, end = index * region_length, min(len(sequence), (index + 1) * region_length)
                if end - start >= MAX_LENGTH:
                    records.append((f"{record}:{start + 1}-{end}", sequence[start:end]))
        held_out.append(Genome(genome.source, records))
    return held_out


def demo_input(data: Path, held_out_table: Path, out: Path, reads_per_class: int, seed: int) -> None:
    by_source = simulated_by_source(held_out_genomes(data, held_out_table), reads_per_class, seed)
    write_reads([read for reads in by_source.values() for read in reads], out)
    print(f"wrote {reads_per_class} reads per class from held-out regions to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("training-inputs", help="simulated reads of both classes for the training table")
    prepare.add_argument("--reads-per-class", type=int, default=2500)
    prepare.add_argument("--seed", type=int, default=11)
    demo = commands.add_parser("demo-input", help="reads from the held-out regions")
    demo.add_argument("--held-out", type=Path, required=True, help="held_out_regions.tsv of the training run")
    demo.add_argument("--reads-per-class", type=int, default=100)
    demo.add_argument("--seed", type=int, default=7)
    for command in (prepare, demo):
        command.add_argument("--data", type=Path, required=True, help="folder with the shared genomes")
        command.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "training-inputs":
        training_inputs(args.data, args.out, args.reads_per_class, args.seed)
    else:
        demo_input(args.data, args.held_out, args.out, args.reads_per_class, args.seed)


if __name__ == "__main__":
    main()
