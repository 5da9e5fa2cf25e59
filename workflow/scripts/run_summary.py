# The samples' summaries side by side, the calls per sample, and the report's page of them with the
# longest viral calls and regions of each sample.
from virnucpro.reporting.results_summary import write_run_summary
from virnucpro.run.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    write_run_summary(snakemake.params.samples, snakemake.input.summaries, snakemake.output.table,
                      snakemake.output.calls, snakemake.output.page, snakemake.params.note,
                      snakemake.input.reads, snakemake.input.regions, snakemake.params.top)
    telemetry.records_in = len(snakemake.input.summaries)
