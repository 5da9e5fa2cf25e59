# Stage 7: the DNABERT-S and ESM-2 embeddings of each frame of a shard, merged (as a checked view,
# and as vectors when outputs.merged_features asks for them).
from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.merge import merge_features

with JobTelemetry.from_snakemake(snakemake, "merge_features") as telemetry:
    frames = merge_features(snakemake.input.nucleotide, snakemake.input.protein, snakemake.output.view,
                            snakemake.output.get("merged"))
    telemetry.records_in = telemetry.records_out = frames
