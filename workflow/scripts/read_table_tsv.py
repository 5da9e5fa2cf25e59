# The read table as gzip-compressed TSV, for users without a Parquet reader.
from virnucpro.io.tables import parquet_to_tsv_gz
from virnucpro.run.telemetry import JobTelemetry

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    telemetry.records_in = telemetry.records_out = parquet_to_tsv_gz(snakemake.input[0], snakemake.output[0])
