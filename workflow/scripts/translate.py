# Stage 2: six-frame translation of one part's chunks, keeping the frames with no stop codon.
from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.translation import identify_frames

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    fasta = snakemake.output.get("nucleotide_fasta"), snakemake.output.get("protein_fasta")
    result = identify_frames(snakemake.input.chunks, snakemake.input.reads, snakemake.output.frames,
                             snakemake.output.chunk_summary, snakemake.params.max_ambiguous_fraction,
                             fasta if all(fasta) else None)
    telemetry.records_in, telemetry.records_out = result.chunks, result.frames
