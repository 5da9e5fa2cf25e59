# Refuse duplicate read IDs over the whole sample; the final outputs wait for this check.
from virnucpro.io.atomic import atomic_output, scratch_directory
from virnucpro.io.read_ids import check_unique_ids
from virnucpro.run.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    with scratch_directory(snakemake.output.checked) as scratch:
        reads = check_unique_ids(snakemake.params.source, snakemake.input.reads, snakemake.input.read_ids, scratch)
    with atomic_output(snakemake.output.checked) as out:
        out.write(f"{reads} reads, no two with the same ID\n")
    telemetry.records_in = telemetry.records_out = reads
