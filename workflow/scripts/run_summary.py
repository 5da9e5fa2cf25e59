# The samples' summaries side by side, the calls per sample, and the report's page of them.
from virnucpro.reporting.results_summary import write_run_summary
from virnucpro.run.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    write_run_summary(snakemake.params.samples, list(snakemake.input), snakemake.output.table,
                      snakemake.output.calls, snakemake.output.page, snakemake.params.note)
    telemetry.records_in = len(snakemake.input)
