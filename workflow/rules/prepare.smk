# Stages 1-4: read the input in parts, chunk the reads, translate them in six frames, plan the
# shards and tokenize each shard for the two embedding models.


# It waits for the model check: a run that cannot succeed stops in seconds, before any work.
rule partition_input:
    input:
        reads=sample_input,
        identities=identity_records,
        models_checked=models_checked,
    output:
        parts=temp(directory("results/{sample}/input")),
        record=f"results/{{sample}}/{INPUT_RECORD}",
    log:
        **job_logs("partition_input", "{sample}"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        parts=input_part_files,
    script:
        "../scripts/partition_input.py"


rule chunk:
    input:
        parts="results/{sample}/input",
    output:
        **(
            {"fasta": temp("results/{sample}/fasta/{part}.chunked.fa")}
            if WRITE_FASTA
            else {}
        ),
        reads="results/{sample}/reads/{part}.arrow",
        chunks=temp("results/{sample}/chunks/{part}.arrow"),
        read_ids=temp("results/{sample}/read_ids/{part}.arrow"),
    log:
        **job_logs("chunk", "{sample}", "{part}"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        part=lambda wildcards, input: input_part(input.parts, wildcards.part),
        expected_length=expected_length,
        # origin=<sequence>:<position> places the reads of a training input; elsewhere it is free text
        read_origins=lambda wildcards: wildcards.sample not in SAMPLES,
    script:
        "../scripts/chunk.py"


rule translate:
    input:
        chunks="results/{sample}/chunks/{part}.arrow",
        reads="results/{sample}/reads/{part}.arrow",
    output:
        **(
            {
                "nucleotide_fasta": temp(
                    "results/{sample}/fasta/{part}.identified_nucleotide.fa"
                ),
                "protein_fasta": temp(
                    "results/{sample}/fasta/{part}.identified_protein.faa"
                ),
            }
            if WRITE_FASTA
            else {}
        ),
        frames="results/{sample}/frames/{part}.arrow",
        chunk_summary="results/{sample}/chunk_summary/{part}.arrow",
    log:
        **job_logs("translate", "{sample}", "{part}"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        max_ambiguous_fraction=config["max_ambiguous_fraction"],
    script:
        "../scripts/translate.py"


# The number of shards follows from the frames' work, known once stage 2 has run: a checkpoint.
# The last job before the GPU work: it refuses duplicate read IDs.
checkpoint plan_shards:
    input:
        reads=part_files("results/{sample}/reads/{part}.arrow"),
        read_ids=part_files("results/{sample}/read_ids/{part}.arrow"),
        frames=part_files("results/{sample}/frames/{part}.arrow"),
    output:
        plan="results/{sample}/shards.tsv",
    log:
        **job_logs("plan_shards", "{sample}"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        source=sample_input,
        shard_tokens=config["shard_tokens"],
    script:
        "../scripts/plan_shards.py"


rule tokenize_nucleotide:
    input:
        plan="results/{sample}/shards.tsv",
        frames=part_files("results/{sample}/frames/{part}.arrow"),
        model=model_input("dnabert_s"),
    output:
        tokens=temp("results/{sample}/tokens/dnabert_s/{shard}.arrow"),
    log:
        **job_logs("tokenize_nucleotide", "{sample}", "{shard}"),
    conda:
        "../../envs/virnucpro.yaml"
    threads: 4
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        kind="dnabert_s",
    script:
        "../scripts/tokenize.py"


rule tokenize_protein:
    input:
        plan="results/{sample}/shards.tsv",
        frames=part_files("results/{sample}/frames/{part}.arrow"),
        model=model_input("esm2"),
    output:
        tokens=temp("results/{sample}/tokens/esm2/{shard}.arrow"),
    log:
        **job_logs("tokenize_protein", "{sample}", "{shard}"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        kind="esm2",
    script:
        "../scripts/tokenize.py"


# VirNucPro's FASTA files, for people: the parts' shares, concatenated once the shard plan has
# accepted the input (no duplicate IDs), so that a refused input leaves no FASTA that looks complete.
rule collect_fasta:
    input:
        plan="results/{sample}/shards.tsv",
        chunked=part_files("results/{sample}/fasta/{part}.chunked.fa"),
        nucleotide=part_files("results/{sample}/fasta/{part}.identified_nucleotide.fa"),
        protein=part_files("results/{sample}/fasta/{part}.identified_protein.faa"),
    output:
        chunked="results/{sample}/chunked.fa",
        nucleotide="results/{sample}/identified_nucleotide.fa",
        protein="results/{sample}/identified_protein.faa",
    log:
        **job_logs("collect_fasta", "{sample}"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    script:
        "../scripts/collect_fasta.py"
