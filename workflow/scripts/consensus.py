# Stage 9: a call per read, its viral regions, and VirNucPro's output files.
from virnucpro.model_store.cache import model_identity
from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.consensus import write_outputs

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    models = {kind: model_identity(path) for kind, path in snakemake.params.models.items()}
    counts = write_outputs(snakemake.wildcards.sample, snakemake.input.reads, snakemake.input.chunk_summary,
                           snakemake.input.frames, snakemake.input.predictions, snakemake.input.lines,
                           snakemake.params.expected_length, snakemake.params.models["classifier"],
                           snakemake.output.results_txt, snakemake.output.highest_score, snakemake.output.reads,
                           snakemake.output.regions, snakemake.params.note, models, snakemake.params.min_codons)
    telemetry.records_in = telemetry.records_out = counts["virus"] + counts["others"] + counts["unclassified"]
    telemetry.details = counts
