# Stages 1-4: chunk the reads, translate them in six frames, split the frames into shards.


rule chunk:
    input:
        reads=sample_input,
    output:
        chunks="results/{sample}/chunked.fa",
        manifest="results/{sample}/read_manifest.parquet",
    params:
        expected_length=EXPECTED_LENGTH,
    log:
        log="results/logs/chunk/{sample}.all.log",
        telemetry="results/telemetry/chunk/{sample}.all.json",
    benchmark:
        "results/benchmarks/chunk/{sample}.all.tsv"
    conda:
        "../../envs/virnucpro.yaml"
    script:
        "../scripts/chunk.py"


rule translate:
    input:
        chunks="results/{sample}/chunked.fa",
    output:
        nucleotide="results/{sample}/identified_nucleotide.fa",
        protein="results/{sample}/identified_protein.faa",
        summary="results/{sample}/chunk_summary.parquet",
    params:
        max_ambiguous_fraction=config["max_ambiguous_fraction"],
    log:
        log="results/logs/translate/{sample}.all.log",
        telemetry="results/telemetry/translate/{sample}.all.json",
    benchmark:
        "results/benchmarks/translate/{sample}.all.tsv"
    conda:
        "../../envs/virnucpro.yaml"
    script:
        "../scripts/translate.py"


rule split_nucleotide:
    input:
        records="results/{sample}/identified_nucleotide.fa",
    output:
        shards=expand("results/{{sample}}/shards/nucleotide/{shard}.fa", shard=SHARDS),
    log:
        log="results/logs/split_nucleotide/{sample}.all.log",
        telemetry="results/telemetry/split_nucleotide/{sample}.all.json",
    benchmark:
        "results/benchmarks/split_nucleotide/{sample}.all.tsv"
    conda:
        "../../envs/virnucpro.yaml"
    script:
        "../scripts/split.py"


rule split_protein:
    input:
        records="results/{sample}/identified_protein.faa",
    output:
        shards=expand("results/{{sample}}/shards/protein/{shard}.faa", shard=SHARDS),
    log:
        log="results/logs/split_protein/{sample}.all.log",
        telemetry="results/telemetry/split_protein/{sample}.all.json",
    benchmark:
        "results/benchmarks/split_protein/{sample}.all.tsv"
    conda:
        "../../envs/virnucpro.yaml"
    script:
        "../scripts/split.py"
