# Stages 3 and 4: split the identified nucleotide or protein records into shards.
from virnucpro.sharding import split_fasta
from virnucpro.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake, snakemake.rule) as telemetry:
    counts = split_fasta(snakemake.input.records, snakemake.output.shards)
    telemetry.records_in = telemetry.records_out = sum(counts)
    telemetry.details = {"records_per_shard": counts}
