# The download_models target: fetch the models that models.* name into their caches.
from virnucpro.model_store.download import download_model
from virnucpro.run.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    fetched = {kind: [str(path) for path in download_model(kind, name)] for kind, name in snakemake.params.models.items()}
    telemetry.details = {"models": fetched}
