# What people read: a summary per sample and for the run, and the run's telemetry as a timing
# report with figures. The outputs marked report() make `snakemake --report report.html`.


rule summarize_sample:
    input:
        reads="results/{sample}/read_predictions.parquet",
        regions="results/{sample}/viral_regions.tsv",
        tracks="results/{sample}/score_tracks.tsv",
        viral_sequences="results/{sample}/viral_sequences.fna",
        viral_regions="results/{sample}/viral_regions.fna",
    output:
        summary=report(
            "results/{sample}/summary.tsv",
            caption="../report/sample_summary.rst",
            category="Results",
            subcategory="{sample}",
            labels={"sample": "{sample}", "item": "summary table"},
        ),
        scores=report(
            "results/{sample}/score_distribution.png",
            caption="../report/score_distribution.rst",
            category="Results",
            subcategory="{sample}",
            labels={"sample": "{sample}", "item": "score distributions"},
        ),
        tracks=report(
            "results/{sample}/score_tracks.png",
            caption="../report/score_tracks.rst",
            category="Results",
            subcategory="{sample}",
            labels={"sample": "{sample}", "item": "score tracks"},
        ),
    log:
        **job_logs("summarize_sample", "{sample}"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        expected_length=expected_length,
        models=run_models,
        note=MODELS_NOTE,
    script:
        "../scripts/summarize_sample.py"


rule run_summary:
    input:
        summaries=expand("results/{sample}/summary.tsv", sample=SAMPLES),
        reads=expand("results/{sample}/read_predictions.parquet", sample=SAMPLES),
        regions=expand("results/{sample}/viral_regions.tsv", sample=SAMPLES),
    output:
        table="results/run_summary.tsv",
        calls=report(
            "results/report/calls_per_sample.png",
            caption="../report/calls_per_sample.rst",
            category="Results",
            subcategory="All samples",
            labels={"sample": "all", "item": "calls per sample"},
        ),
        page=report(
            "results/report/run_summary.html",
            caption="../report/run_summary.rst",
            category="Results",
            subcategory="All samples",
            labels={"sample": "all", "item": "run summary"},
        ),
    log:
        **job_logs("run_summary"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        samples=list(SAMPLES),
        note=MODELS_NOTE,
        top=config["report"]["top_calls"],
    script:
        "../scripts/run_summary.py"


rule timing_report:
    input:
        # the telemetry of every job of the samples, rule by rule in workflow order
        reported_telemetry,
    output:
        table="results/telemetry.parquet",
        gpu_samples="results/telemetry_gpu_samples.parquet",
        batches="results/telemetry_batches.parquet",
        summary="results/timing_report.tsv",
        report="results/timing_report.md",
        html=report(
            "results/report/timing_report.html",
            caption="../report/timing_report.rst",
            category="Run telemetry",
            subcategory="Latest run",
            labels={"item": "timing report"},
        ),
        timeline=report(
            "results/report/job_timeline.png",
            caption="../report/job_timeline.rst",
            category="Run telemetry",
            subcategory="Latest run",
            labels={"item": "job timeline"},
        ),
        gpu_usage=report(
            "results/report/gpu_usage.png",
            caption="../report/gpu_usage.rst",
            category="Run telemetry",
            subcategory="Latest run",
            labels={"item": "GPU utilisation, memory and power"},
        ),
        stage_times=report(
            "results/report/stage_times.png",
            caption="../report/stage_times.rst",
            category="Run telemetry",
            subcategory="Latest run",
            labels={"item": "time per stage"},
        ),
        throughput=report(
            "results/report/embedding_throughput.png",
            caption="../report/embedding_throughput.rst",
            category="Run telemetry",
            subcategory="Latest run",
            labels={"item": "embedding throughput"},
        ),
    log:
        **job_logs("timing_report"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        note=MODELS_NOTE,
    script:
        "../scripts/timing_report.py"


rule read_table_tsv:
    input:
        "results/{sample}/read_predictions.parquet",
    output:
        "results/{sample}/read_predictions.tsv.gz",
    log:
        **job_logs("read_table_tsv", "{sample}"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    script:
        "../scripts/read_table_tsv.py"
