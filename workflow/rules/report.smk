# The timing report: every job's telemetry in one table, and a per-stage summary.


rule timing_report:
    input:
        expand("results/{sample}/read_predictions.parquet", sample=SAMPLES),
    output:
        table="results/telemetry.parquet",
        summary="results/timing_report.tsv",
        report="results/timing_report.md",
    log:
        log="results/logs/timing_report/all.all.log",
        telemetry="results/telemetry/timing_report/all.all.json",
    benchmark:
        "results/benchmarks/timing_report/all.all.tsv"
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        samples=list(SAMPLES),
        note=MODELS_NOTE,
    script:
        "../scripts/timing_report.py"
