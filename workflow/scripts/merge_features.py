# Stage 7 (outputs.merged_features): the DNABERT-S and ESM-2 embeddings of each frame of a shard, merged.
from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.merge import merge_features

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    frames = merge_features(snakemake.input.nucleotide, snakemake.input.protein, snakemake.output.merged)
    telemetry.records_in = telemetry.records_out = frames
