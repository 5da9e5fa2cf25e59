# Stages 7-9: merge the two embeddings of each frame, classify the frames, call each read.


rule merge_features:
    input:
        nucleotide="results/{sample}/features/dnabert_s/{shard}.arrow",
        protein="results/{sample}/features/esm2/{shard}.arrow",
    output:
        features="results/{sample}/features/merged/{shard}.arrow",
    log:
        log="results/logs/merge_features/{sample}.{shard}.log",
        telemetry="results/telemetry/merge_features/{sample}.{shard}.json",
    benchmark:
        "results/benchmarks/merge_features/{sample}.{shard}.tsv"
    conda:
        "../../envs/virnucpro.yaml"
    script:
        "../scripts/merge_features.py"


rule predict_frames:
    input:
        features="results/{sample}/features/merged/{shard}.arrow",
        classifier=CLASSIFIER,
    output:
        predictions="results/{sample}/frame_predictions/{shard}.parquet",
    params:
        expected_length=EXPECTED_LENGTH,
        classifier_expected_length=config["models"]["classifier_expected_length"],
    threads: 8
    log:
        log="results/logs/predict_frames/{sample}.{shard}.log",
        telemetry="results/telemetry/predict_frames/{sample}.{shard}.json",
    benchmark:
        "results/benchmarks/predict_frames/{sample}.{shard}.tsv"
    conda:
        "../../envs/virnucpro.yaml"
    script:
        "../scripts/predict_frames.py"


rule consensus:
    input:
        manifest="results/{sample}/read_manifest.parquet",
        chunk_summary="results/{sample}/chunk_summary.parquet",
        predictions=expand("results/{{sample}}/frame_predictions/{shard}.parquet", shard=SHARDS),
    output:
        results_txt="results/{sample}/prediction_results.txt",
        highest_score="results/{sample}/prediction_results_highestscore.csv",
        reads="results/{sample}/read_predictions.parquet",
    params:
        expected_length=EXPECTED_LENGTH,
        classifier=CLASSIFIER,
        note=MODELS_NOTE,
    log:
        log="results/logs/consensus/{sample}.all.log",
        telemetry="results/telemetry/consensus/{sample}.all.json",
    benchmark:
        "results/benchmarks/consensus/{sample}.all.tsv"
    conda:
        "../../envs/virnucpro.yaml"
    script:
        "../scripts/consensus.py"
