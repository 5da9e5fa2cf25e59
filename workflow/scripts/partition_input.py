# Stages 1-2 run over parts: read the input once, checking its structure, into parts.
from pathlib import Path

from virnucpro.partition import partition_input
from virnucpro.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake, "partition_input") as telemetry:
    directory = Path(snakemake.output.parts)
    directory.mkdir(parents=True, exist_ok=True)
    result = partition_input(snakemake.input.reads, [directory / f"{part}.arrow" for part in snakemake.params.parts])
    telemetry.records_in = telemetry.records_out = result.reads
    telemetry.details = {"bases": result.bases, "reads_per_part": result.reads_per_part}
