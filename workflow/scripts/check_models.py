# Before any GPU work: the embedding models from their headers, and the classifier against them.
from virnucpro.model_store.check import check_models
from virnucpro.run.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    report = check_models({"dnabert_s": snakemake.input.dnabert_s, "esm2": snakemake.input.esm2},
                          snakemake.input.get("classifier"), snakemake.params.expected_length,
                          snakemake.params.classifier_expected_length, snakemake.output.report)
    telemetry.records_in = telemetry.records_out = len(report["embedding_models"]) + (report["classifier"] is not None)
    telemetry.details = report
