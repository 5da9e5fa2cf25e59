# The `download_models` target: fetch the models that models.* name into the caches where the
# workflow finds them (see virnucpro.model_store.download). It runs where Snakemake runs: on a cluster, the
# login node, which has the internet that compute nodes may lack.


rule download_models:
    output:
        manifests=[
            manifest
            for kind, name in DOWNLOADS.items()
            for manifest in manifest_paths(kind, name)
        ],
    log:
        **job_logs("download_models"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        models=DOWNLOADS,
    script:
        "../scripts/download_models.py"
