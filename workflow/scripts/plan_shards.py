# Before any GPU work: refuse duplicate read IDs, then cut the frames into shards sized by work.
from virnucpro.io.atomic import scratch_directory
from virnucpro.io.read_ids import check_unique_ids
from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.sharding import plan_shards, write_shard_plan

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    with scratch_directory(snakemake.output.plan) as scratch:
        check_unique_ids(snakemake.params.source, snakemake.input.reads, snakemake.input.read_ids, scratch)
    shards = plan_shards(snakemake.input.frames, snakemake.params.shard_tokens)
    write_shard_plan(snakemake.output.plan, shards)
    telemetry.records_in = telemetry.records_out = sum(shard.frames for shard in shards)
    telemetry.details = {"shards": len(shards), "shard_tokens": snakemake.params.shard_tokens,
                         "protein_tokens": sum(shard.protein_tokens for shard in shards)}
