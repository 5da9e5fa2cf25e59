# The per-stage timing report over all jobs' telemetry.
from virnucpro.report import write_report
from virnucpro.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake, "timing_report") as telemetry:
    telemetry.records_in = write_report(snakemake.params.telemetry, snakemake.output.table,
                                        snakemake.output.report, snakemake.output.summary, snakemake.params.note)
