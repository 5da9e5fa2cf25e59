# The per-stage timing report over the telemetry of the run's samples.
from pathlib import Path

from virnucpro.report import write_report
from virnucpro.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake, "timing_report") as telemetry:
    telemetry_directory = Path(snakemake.log.telemetry).parent.parent  # results/telemetry/<stage>/<job>.json
    telemetry.records_in = write_report(telemetry_directory, snakemake.params.samples, snakemake.output.table,
                                        snakemake.output.report, snakemake.output.summary, snakemake.params.note)
