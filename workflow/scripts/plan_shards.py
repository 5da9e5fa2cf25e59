# One part's shard plan: its frames, and those that earlier plans left, cut into shards sized by work.
from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.sharding import plan_shards, read_shard_plan, write_shard_plan

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    earlier = [shard for plan in snakemake.input.earlier_plans for shard in read_shard_plan(plan)]
    shards = plan_shards(snakemake.input.frames, snakemake.wildcards.part, earlier, snakemake.params.last,
                         snakemake.params.shard_tokens)
    write_shard_plan(snakemake.output.plan, shards)
    telemetry.records_in = telemetry.records_out = sum(shard.frames for shard in shards)
    telemetry.details = {"shards": len(shards), "shard_tokens": snakemake.params.shard_tokens,
                         "protein_tokens": sum(shard.protein_tokens for shard in shards)}
