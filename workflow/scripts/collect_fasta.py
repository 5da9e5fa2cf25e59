# VirNucPro's FASTA files for people: the parts' shares, concatenated.
from virnucpro.files import concatenate_files
from virnucpro.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake, "collect_fasta") as telemetry:
    written = {name: concatenate_files(snakemake.input[name], snakemake.output[name])
               for name in ("chunked", "nucleotide", "protein")}
    telemetry.details = {"bytes": written}
