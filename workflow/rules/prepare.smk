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
    priority: first_part_first
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
    priority: first_part_first
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        max_ambiguous_fraction=config["max_ambiguous_fraction"],
    script:
        "../scripts/translate.py"


# A part's shards follow from its frames' work and what the earlier parts' plans left, known once
# stage 2 has run on it: a checkpoint per part, so that the first part's GPU work starts while later
# parts are still being prepared. The GPU work waits for the model check.
checkpoint plan_shards:
    input:
        frames=parts_up_to("results/{sample}/frames/{part}.arrow"),
        earlier_plans=earlier_plans,
        models_checked=models_checked,
    output:
        plan=SHARD_PLAN,
    log:
        **job_logs("plan_shards", "{sample}", "{part}"),
    priority: GPU_WORK_PRIORITY
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        last=is_last_part,
        shard_tokens=config["shard_tokens"],
    script:
        "../scripts/plan_shards.py"


# Duplicate read IDs over the whole sample. Not on the way to the GPU work; the sample's final
# outputs (consensus) and training wait for it, so a run with duplicates fails before them.
rule check_read_ids:
    input:
        reads=part_files("results/{sample}/reads/{part}.arrow"),
        read_ids=part_files("results/{sample}/read_ids/{part}.arrow"),
    output:
        checked="results/{sample}/read_ids_checked.txt",
    log:
        **job_logs("check_read_ids", "{sample}"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        source=sample_input,
    script:
        "../scripts/check_read_ids.py"


rule tokenize_nucleotide:
    input:
        plan=shard_plan,
        frames=parts_up_to("results/{sample}/frames/{part}.arrow"),
        model=model_input("dnabert_s"),
    output:
        tokens=temp("results/{sample}/tokens/dnabert_s/{shard}.arrow"),
    log:
        **job_logs("tokenize_nucleotide", "{sample}", "{shard}"),
    priority: GPU_WORK_PRIORITY
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
        plan=shard_plan,
        frames=parts_up_to("results/{sample}/frames/{part}.arrow"),
        model=model_input("esm2"),
    output:
        tokens=temp("results/{sample}/tokens/esm2/{shard}.arrow"),
    log:
        **job_logs("tokenize_protein", "{sample}", "{shard}"),
    priority: GPU_WORK_PRIORITY
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        kind="esm2",
    script:
        "../scripts/tokenize.py"


# VirNucPro's FASTA files, for people: the parts' shares, concatenated once the duplicate-ID check
# has accepted the input, so that a refused input leaves no FASTA that looks complete.
rule collect_fasta:
    input:
        read_ids_checked="results/{sample}/read_ids_checked.txt",
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
