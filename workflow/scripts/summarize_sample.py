# A sample's summary table and score distributions, from its per-read table.
from virnucpro.reporting.results_summary import summarize_sample, write_sample_summary
from virnucpro.run.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    summary = summarize_sample(snakemake.wildcards.sample, snakemake.input.reads, snakemake.params.models,
                               snakemake.params.expected_length, snakemake.params.note)
    write_sample_summary(summary, snakemake.output.summary, snakemake.output.scores)
    telemetry.records_in = summary.value("reads")
