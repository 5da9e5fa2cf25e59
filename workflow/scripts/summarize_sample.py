# A sample's summary table, score distributions and score tracks, from its per-read table.
from virnucpro.reporting.results_summary import summarize_sample, write_sample_summary, write_score_tracks
from virnucpro.run.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    files = {"viral_sequences": snakemake.input.viral_sequences, "viral_regions": snakemake.input.viral_regions}
    summary = summarize_sample(snakemake.wildcards.sample, snakemake.input.reads, snakemake.params.models,
                               snakemake.params.expected_length, snakemake.params.note, files)
    write_sample_summary(summary, snakemake.output.summary, snakemake.output.scores)
    tracks = write_score_tracks(snakemake.wildcards.sample, snakemake.input.tracks, snakemake.input.regions,
                                snakemake.output.tracks)
    telemetry.records_in = summary.value("reads")
    telemetry.details = {"score_tracks": tracks}
