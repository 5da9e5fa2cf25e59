# Stages 5 and 6: DNABERT-S or ESM-2 embeddings of one shard.
from virnucpro.embedding import run_embedding_job
from virnucpro.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake, snakemake.rule) as telemetry:
    run_embedding_job(snakemake.params.kind, snakemake.input.model, snakemake.input.tokens,
                      snakemake.output.features, snakemake.params.device, snakemake.params.lock_dir,
                      snakemake.params.token_budget, snakemake.params.compile, snakemake.threads, telemetry)
