# Stages 7-9: the two embeddings of each frame merged, the frames classified, a call for each read
# and the viral regions of each sequence.


# A marker that every shard of a part's plan is classified (stage 8). The final outputs ask for it
# per part: a part's shard jobs then join the run as soon as its plan is made, where asking for all
# of a sample's shards at once would add them only once every part is planned.
rule part_predicted:
    input:
        part_shard_files("results/{sample}/frame_predictions/{shard}.parquet"),
    output:
        touch("results/{sample}/shards/{part}.predicted"),
    resources:
        mem_mb=JOB_MEM_MB,


# Stage 7's merged vectors, kept only when outputs.merged_features asks for them: prediction and
# training read the two embeddings of a frame side by side from their feature files.
rule merge_features:
    input:
        nucleotide="results/{sample}/features/dnabert_s/{shard}.arrow",
        protein="results/{sample}/features/esm2/{shard}.arrow",
    output:
        merged="results/{sample}/features/merged/{shard}.arrow",
    log:
        **job_logs("merge_features", "{sample}", "{shard}"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    script:
        "../scripts/merge_features.py"


rule predict_frames:
    input:
        nucleotide="results/{sample}/features/dnabert_s/{shard}.arrow",
        protein="results/{sample}/features/esm2/{shard}.arrow",
        frames=parts_up_to("results/{sample}/frames/{part}.arrow"),
        reads=parts_up_to("results/{sample}/reads/{part}.arrow"),
        classifier=classifier_path,
    output:
        predictions="results/{sample}/frame_predictions/{shard}.parquet",
        lines=temp("results/{sample}/frame_predictions/{shard}.txt"),
    log:
        **job_logs("predict_frames", "{sample}", "{shard}"),
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
        predicted=part_files("results/{sample}/shards/{part}.predicted"),
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
        **job_logs("consensus", "{sample}"),
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
        **job_logs("viral_fasta", "{sample}"),
    conda:
        "../../envs/virnucpro.yaml"
    resources:
        mem_mb=JOB_MEM_MB,
    script:
        "../scripts/viral_fasta.py"
