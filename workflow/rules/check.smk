# First: the run's models, checked from their headers in seconds (see virnucpro.model_store.check).
# A sample's first job, and so all its work, waits for it.


rule check_models:
    input:
        unpack(models_to_check),
        identities=identity_records,
    output:
        report="results/checks/models.{purpose}.json",
    log:
        **job_logs("check_models", "{purpose}"),
    # first of all jobs: a run that cannot succeed stops in seconds
    priority: 100
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        expected_length=checked_length,
        classifier_expected_length=config["models"]["classifier_expected_length"],
    script:
        "../scripts/check_models.py"
