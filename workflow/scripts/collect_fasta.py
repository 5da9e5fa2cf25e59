# VirNucPro's FASTA files for people: the parts' shares, concatenated (the three appear together).
from virnucpro.io.atomic import atomic_paths, concatenate_files
from virnucpro.run.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    names = ("chunked", "nucleotide", "protein")
    written = {}
    with atomic_paths([snakemake.output[name] for name in names]) as temporaries:
        for name, temporary in zip(names, temporaries):
            with open(temporary, "wb") as out:
                written[name] = concatenate_files(snakemake.input[name], out)
    telemetry.details = {"bytes": written}
