# The run's telemetry in typed tables, the per-stage timing report and its figures.
from pathlib import Path

from virnucpro.reporting.timing import write_report
from virnucpro.run.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake, "timing_report") as telemetry:
    telemetry_directory = Path(snakemake.log.telemetry).parent.parent  # results/telemetry/<stage>/<job>.json
    outputs = {name: getattr(snakemake.output, name) for name in (
        "table", "gpu_samples", "batches", "summary", "report", "html", "timeline", "gpu_usage", "stage_times",
        "throughput")}
    telemetry.records_in = write_report(telemetry_directory, snakemake.params.samples, outputs, snakemake.params.note)
