# Stage 10: the sequences called virus and the viral regions of the others, as FASTA.
from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.viral_fasta import write_viral_fasta

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    counts = write_viral_fasta(snakemake.input.sequences, snakemake.input.reads, snakemake.input.regions,
                               snakemake.output.sequences, snakemake.output.regions)
    telemetry.records_in = counts["records"]
    telemetry.records_out = counts["viral_sequences"] + counts["viral_regions"]
    telemetry.details = {"viral_sequences": counts["viral_sequences"], "viral_regions": counts["viral_regions"]}
