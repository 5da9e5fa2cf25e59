# Stage 7: DNABERT-S and ESM-2 embeddings of each frame, concatenated.
from virnucpro.features import merge_feature_files
from virnucpro.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake, "merge_features") as telemetry:
    frames = merge_feature_files(snakemake.input.nucleotide, snakemake.input.protein, snakemake.output.features)
    telemetry.records_in = telemetry.records_out = frames
