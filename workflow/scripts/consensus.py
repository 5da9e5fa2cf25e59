# Stage 9: a call per read, its viral regions, and VirNucPro's output files.
from virnucpro.model_store.cache import model_identity
from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.consensus import CallRule, Outputs, StageInputs, write_outputs

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    models = {kind: model_identity(path) for kind, path in snakemake.params.models.items()}
    inputs = StageInputs(snakemake.input.reads, snakemake.input.chunk_summary, snakemake.input.frames,
                         snakemake.input.predictions, snakemake.input.lines)
    outputs = Outputs(results_txt=snakemake.output.results_txt, highest_score=snakemake.output.highest_score,
                      read_table=snakemake.output.reads, regions=snakemake.output.regions,
                      score_tracks=snakemake.output.score_tracks)
    counts = write_outputs(snakemake.wildcards.sample, inputs, outputs, snakemake.params.expected_length,
                           snakemake.params.models["classifier"],
                           CallRule(**snakemake.params.calls, min_codons=snakemake.params.min_codons),
                           snakemake.params.score_tracks, snakemake.params.note, models)
    telemetry.records_in = telemetry.records_out = sum(counts[call] for call in ("virus", "provirus", "others",
                                                                                  "unclassified"))
    telemetry.details = counts
