# Stages 1-2 run over parts: read the input once, checking its structure, into parts; and record
# which file the sample's results come from.
from pathlib import Path

from virnucpro.io.atomic import atomic_output
from virnucpro.run.config import input_identity
from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.partition import partition_input

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    Path(snakemake.output.parts).mkdir(parents=True, exist_ok=True)
    result = partition_input(snakemake.input.reads, snakemake.params.parts)
    with atomic_output(snakemake.output.record) as record:
        record.write(input_identity(snakemake.input.reads) + "\n")
    telemetry.records_in = telemetry.records_out = result.reads
    telemetry.details = {"bases": result.bases, "reads_per_part": result.reads_per_part}
