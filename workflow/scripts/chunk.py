# Stage 1: chunk each read to the expected length.
from virnucpro.chunking import chunk_reads
from virnucpro.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake, "chunk") as telemetry:
    result = chunk_reads(snakemake.input.reads, snakemake.output.chunks, snakemake.output.manifest,
                         snakemake.params.expected_length)
    telemetry.records_in, telemetry.records_out = result.reads, result.chunks
    telemetry.details = {"bases": result.bases, "expected_length": snakemake.params.expected_length}
