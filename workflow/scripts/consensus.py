# Stage 9: a call per read, its viral regions, and VirNucPro's output files.
from virnucpro.consensus import write_outputs
from virnucpro.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake, "consensus") as telemetry:
    counts = write_outputs(snakemake.wildcards.sample, snakemake.input.reads, snakemake.input.chunk_summary,
                           snakemake.input.frames, snakemake.input.predictions, snakemake.input.lines,
                           snakemake.params.expected_length, snakemake.params.classifier,
                           snakemake.output.results_txt, snakemake.output.highest_score, snakemake.output.reads,
                           snakemake.output.regions, snakemake.params.note)
    telemetry.records_in = telemetry.records_out = counts["virus"] + counts["others"] + counts["unclassified"]
    telemetry.details = counts
