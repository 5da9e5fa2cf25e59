# Stages 7-9: merge the two embeddings of each frame, classify the frames, call each read and find
# the viral regions of each sequence.


# A marker that every shard of a part's plan is embedded and merged. The final outputs ask for it
# per part: a part's shard jobs then join the run as soon as its plan is made, where asking for all
# of a sample's shards at once would add them only once every part is planned.
rule part_embedded:
    input:
        views=part_shard_files("results/{sample}/features/merged/{shard}.json"),
    output:
        touch("results/{sample}/shards/{part}.embedded"),


rule merge_features:
    input:
        nucleotide="results/{sample}/features/dnabert_s/{shard}.arrow",
        protein="results/{sample}/features/esm2/{shard}.arrow",
    output:
        **(
            {"merged": "results/{sample}/features/merged/{shard}.arrow"}
            if config["outputs"]["merged_features"]
            else {}
        ),
        view="results/{sample}/features/merged/{shard}.json",
    log:
        log="results/logs/merge_features/{sample}.{shard}.log",
        telemetry="results/telemetry/merge_features/{sample}.{shard}.json",
    benchmark:
        "results/benchmarks/merge_features/{sample}.{shard}.tsv"
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    script:
        "../scripts/merge_features.py"


rule predict_frames:
    input:
        view="results/{sample}/features/merged/{shard}.json",
        # read through the view; named so that Snakemake keeps them until this job is done
        nucleotide="results/{sample}/features/dnabert_s/{shard}.arrow",
        protein="results/{sample}/features/esm2/{shard}.arrow",
        frames=part_files("results/{sample}/frames/{part}.arrow"),
        reads=part_files("results/{sample}/reads/{part}.arrow"),
        classifier=classifier_path,
    output:
        predictions="results/{sample}/frame_predictions/{shard}.parquet",
        lines=temp("results/{sample}/frame_predictions/{shard}.txt"),
    log:
        log="results/logs/predict_frames/{sample}.{shard}.log",
        telemetry="results/telemetry/predict_frames/{sample}.{shard}.json",
    benchmark:
        "results/benchmarks/predict_frames/{sample}.{shard}.tsv"
    conda:
        "../../envs/virnucpro.yaml"
    threads: 8
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        expected_length=expected_length,
        classifier_expected_length=config["models"]["classifier_expected_length"],
    script:
        "../scripts/predict_frames.py"


rule consensus:
    input:
        reads=part_files("results/{sample}/reads/{part}.arrow"),
        chunk_summary=part_files("results/{sample}/chunk_summary/{part}.arrow"),
        frames=part_files("results/{sample}/frames/{part}.arrow"),
        # per part, so that each part's GPU work joins the run once its plan is made
        embedded=part_files("results/{sample}/shards/{part}.embedded"),
        predictions=shard_files("results/{sample}/frame_predictions/{shard}.parquet"),
        lines=shard_files("results/{sample}/frame_predictions/{shard}.txt"),
        # the final outputs wait for the sample's duplicate-ID check
        read_ids_checked="results/{sample}/read_ids_checked.txt",
    output:
        results_txt="results/{sample}/prediction_results.txt",
        highest_score="results/{sample}/prediction_results_highestscore.csv",
        reads="results/{sample}/read_predictions.parquet",
        regions="results/{sample}/viral_regions.tsv",
        score_tracks="results/{sample}/score_tracks.tsv",
    log:
        log="results/logs/consensus/{sample}.all.log",
        telemetry="results/telemetry/consensus/{sample}.all.json",
    benchmark:
        "results/benchmarks/consensus/{sample}.all.tsv"
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    params:
        expected_length=expected_length,
        models=run_models,
        note=MODELS_NOTE,
        min_codons=config["min_codons"],
        calls=call_rule(config["calls"]),
        score_tracks=config["report"]["score_tracks"],
    script:
        "../scripts/consensus.py"


rule viral_fasta:
    input:
        sequences=sample_input,
        reads="results/{sample}/read_predictions.parquet",
        regions="results/{sample}/viral_regions.tsv",
    output:
        sequences="results/{sample}/viral_sequences.fna",
        regions="results/{sample}/viral_regions.fna",
    log:
        log="results/logs/viral_fasta/{sample}.all.log",
        telemetry="results/telemetry/viral_fasta/{sample}.all.json",
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    script:
        "../scripts/viral_fasta.py"
