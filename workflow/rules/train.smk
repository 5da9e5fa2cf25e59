# The `train` target: a classifier from labelled sequences (stages 1-6 as for prediction).


rule train_classifier:
    input:
        training_files,
    output:
        model=f"{TRAINING_DIR}/classifier.pt",
        metrics=f"{TRAINING_DIR}/metrics.json",
        report=f"{TRAINING_DIR}/report.md",
        roc=f"{TRAINING_DIR}/roc.png",
        curve=f"{TRAINING_DIR}/training_curve.png",
        holdout=f"{TRAINING_DIR}/held_out_regions.tsv",
    log:
        **job_logs("train_classifier", "training", EXPECTED_LENGTH),
    conda:
        "../../envs/virnucpro.yaml"
    threads: 4
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        inputs=training_inputs,
        expected_length=EXPECTED_LENGTH,
        training=config["training"],
    script:
        "../scripts/train_classifier.py"


rule train:
    input:
        rules.train_classifier.output,
