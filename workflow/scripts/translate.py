# Stage 2: six-frame translation, keeping the frames with no stop codon.
from virnucpro.telemetry import JobTelemetry
from virnucpro.translation import identify_frames

with JobTelemetry.from_snakemake(snakemake, "translate") as telemetry:
    result = identify_frames(snakemake.input.chunks, snakemake.output.nucleotide, snakemake.output.protein,
                             snakemake.output.summary, snakemake.params.max_ambiguous_fraction)
    telemetry.records_in, telemetry.records_out = result.chunks, result.frames
