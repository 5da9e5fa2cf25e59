# Stages 5-6: DNABERT-S embeddings of the nucleotide frames, ESM-2 embeddings of the protein
# frames. One job per shard and model; each job leases a GPU of its own (see virnucpro.run.devices).


rule embed_dnabert_s:
    input:
        tokens="results/{sample}/tokens/dnabert_s/{shard}.arrow",
        model=model_input("dnabert_s"),
    output:
        features=temp("results/{sample}/features/dnabert_s/{shard}.arrow"),
    log:
        **job_logs("embed_dnabert_s", "{sample}", "{shard}"),
    priority: GPU_WORK_PRIORITY
    conda:
        "../../envs/virnucpro.yaml"
    threads: 4
    resources:
        mem_mb=DNABERT_S_JOB_MEM_MB,
        gpu=GPU_PER_JOB,
    params:
        kind="dnabert_s",
        device=config["embedding"]["device"],
        token_budget=token_budget("dnabert_s"),
        compile=config["embedding"]["compile"],
        lock_dir=GPU_LOCK_DIR,
    script:
        "../scripts/embed.py"


rule embed_esm2:
    input:
        tokens="results/{sample}/tokens/esm2/{shard}.arrow",
        model=model_input("esm2"),
    output:
        features=temp("results/{sample}/features/esm2/{shard}.arrow"),
    log:
        **job_logs("embed_esm2", "{sample}", "{shard}"),
    priority: GPU_WORK_PRIORITY
    conda:
        "../../envs/virnucpro.yaml"
    threads: 4
    resources:
        mem_mb=ESM2_JOB_MEM_MB,
        gpu=GPU_PER_JOB,
    params:
        kind="esm2",
        device=config["embedding"]["device"],
        token_budget=token_budget("esm2"),
        compile=config["embedding"]["compile"],
        lock_dir=GPU_LOCK_DIR,
    script:
        "../scripts/embed.py"
