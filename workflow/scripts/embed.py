# Stages 5 and 6: DNABERT-S or ESM-2 embeddings of one shard.
import logging
import os
import sys

from virnucpro.embedding import run_embedding_job
from virnucpro.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake, snakemake.rule) as telemetry:
    run_embedding_job(snakemake.params.kind, snakemake.input.model, snakemake.input.tokens,
                      snakemake.output.features, snakemake.params.device, snakemake.params.lock_dir,
                      snakemake.params.token_budget, snakemake.params.compile, snakemake.threads, telemetry)
# Outputs and telemetry are written. Tearing down CUDA and the compiler takes seconds during which
# the next GPU job cannot start: end the process now.
logging.shutdown()
sys.stdout.flush(), sys.stderr.flush()
os._exit(0)
