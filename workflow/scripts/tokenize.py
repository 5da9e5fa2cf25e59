# Stages 3 and 4: one shard's nucleotide or protein frames, tokenized for DNABERT-S or ESM-2.
import os

from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.sharding import shard_of, tokenize_shard

os.environ["RAYON_NUM_THREADS"] = str(snakemake.threads)  # the tokenizers library's threads
with JobTelemetry.from_snakemake(snakemake) as telemetry:
    shard = shard_of(snakemake.input.plan, snakemake.wildcards.shard)
    tokens = tokenize_shard(snakemake.params.kind, snakemake.input.model, snakemake.input.frames, shard,
                         snakemake.output.tokens)
    telemetry.records_in = telemetry.records_out = shard.frames
    telemetry.details = {"tokens": tokens, "row_start": shard.row_start, "row_end": shard.row_end}
