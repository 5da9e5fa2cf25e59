# The run's telemetry in typed tables, the per-stage timing report and its figures.
from virnucpro.reporting.timing import write_report
from virnucpro.run.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    outputs = {name: getattr(snakemake.output, name) for name in (
        "table", "gpu_samples", "batches", "summary", "report", "html", "timeline", "gpu_usage", "stage_times",
        "throughput")}
    telemetry.records_in = write_report(list(snakemake.input), outputs, snakemake.params.note)
