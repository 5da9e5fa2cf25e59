# Stage 1: chunk each read of one part of the input to the expected length.
from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.chunking import chunk_part

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    result = chunk_part(snakemake.params.part, snakemake.params.expected_length,
                        snakemake.output.reads, snakemake.output.chunks, snakemake.output.read_ids,
                        snakemake.output.get("fasta"), read_origins=snakemake.params.read_origins)
    for warning in result.warnings:
        telemetry.warn(warning)
    telemetry.records_in, telemetry.records_out = result.reads, result.chunks
    telemetry.details = {"bases": result.bases, "expected_length": snakemake.params.expected_length}
