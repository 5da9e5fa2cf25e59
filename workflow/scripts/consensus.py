# Stage 9: a call per read, and VirNucPro's output files.
from virnucpro.consensus import write_outputs
from virnucpro.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake, "consensus") as telemetry:
    calls = write_outputs(snakemake.wildcards.sample, snakemake.input.manifest, snakemake.input.chunk_summary,
                          snakemake.input.predictions, snakemake.params.expected_length,
                          snakemake.params.classifier, snakemake.output.results_txt,
                          snakemake.output.highest_score, snakemake.output.reads, snakemake.params.note)
    called = calls.column("call").to_pylist()
    telemetry.records_in = telemetry.records_out = calls.num_rows
    telemetry.details = {"virus": called.count("virus"), "others": called.count("others"),
                         "unclassified": called.count(None)}
