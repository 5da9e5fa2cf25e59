import os
from pathlib import Path

from snakemake.logging import logger
from snakemake.utils import validate

from virnucpro.devices import job_gpus, lock_directory
from virnucpro.partition import part_count
from virnucpro.sharding import read_shard_plan
from virnucpro.telemetry import RUN_ID_VARIABLE, new_run_id
from virnucpro.workflow_config import (
    models_note,
    read_training_inputs,
    resolve_classifier_path,
    resolve_samples,
    unit_names,
)

validate(config, "../schemas/config.schema.yaml")

# One identifier per Snakemake invocation, recorded in every job's telemetry so that the report
# tells this run's jobs from those of earlier runs. Set here in the main process; a job's own
# Snakemake process (a cluster job's, through envvars) inherits it and keeps it.
os.environ.setdefault(RUN_ID_VARIABLE, new_run_id())


envvars:
    RUN_ID_VARIABLE,


SAMPLES = resolve_samples(config)
# The training table matters only to the `train` target; a run without it still works.
TRAINING_TABLE = config["training"]["inputs"]
TRAINING_INPUTS = (
    read_training_inputs(TRAINING_TABLE) if Path(TRAINING_TABLE).exists() else []
)
clashes = set(SAMPLES) & {row["name"] for row in TRAINING_INPUTS}
if clashes:
    raise ValueError(
        f"config: samples and training inputs share names {sorted(clashes)}"
    )
# Every sequence file the stages 1-7 may process, prediction samples and training inputs alike.
INPUTS = {**SAMPLES, **{row["name"]: row["path"] for row in TRAINING_INPUTS}}
EXPECTED_LENGTH = config["expected_length"]
# Stages 1-2 run over parts of each input; their number follows from the file's size, so it is
# known now, in every Snakemake process (the main one and each cluster job's).
PARTS = {
    name: unit_names(part_count(path, config["part_mb"]))
    for name, path in SAMPLES.items()
}
WRITE_FASTA = config["outputs"]["virnucpro_fasta"]
CLASSIFIER = resolve_classifier_path(config)
# Set when the run uses the built-in demonstration models: the outputs then say so.
MODELS_NOTE = models_note(config, workflow.basedir)
# Memory of a job in MB (the `mem_mb` resource; SLURM's --mem): a constant, since every job streams
# its data in blocks of a fixed size (README, "Scale"). The embedding jobs hold a model as well.
# Telemetry records each job's peak RSS against it.
JOB_MEM_MB = 4000
DNABERT_S_JOB_MEM_MB = 16000
ESM2_JOB_MEM_MB = 32000
# GPU rules ask for the standard `gpu` resource unless the embedding runs on the CPU.
GPU_PER_JOB = 0 if config["embedding"]["device"] == "cpu" else 1
GPU_LOCK_DIR = lock_directory(config["embedding"]["gpu_lock_dir"])
# The device setting must be one that the GPU jobs can meet. Where they run on this machine, find
# out now: "cuda" needs a GPU here, and "auto" says now when it will have to use the CPU although a
# GPU seems present (each job says so again). A cluster job's node is not known here.
if workflow.is_main_process and workflow.local_exec and not workflow.dryrun:
    _, DEVICE_WARNING = job_gpus(config["embedding"]["device"])
    if DEVICE_WARNING:
        logger.warning(f"Warning: {DEVICE_WARNING}")


wildcard_constraints:
    sample="[A-Za-z0-9][A-Za-z0-9_-]*",
    part="[0-9]+",
    shard="[0-9]+",
    purpose="predict|train",


def sample_input(wildcards):
    return INPUTS[wildcards.sample]


def sample_parts(sample):
    """Part names of a sample (a training input gets its own the first time it is asked for)."""
    if sample not in PARTS:
        PARTS[sample] = unit_names(part_count(INPUTS[sample], config["part_mb"]))
    return PARTS[sample]


def sample_shards(sample):
    """Shard names of a sample, from its shard plan (a checkpoint: known once stage 2 has run)."""
    plan = checkpoints.plan_shards.get(sample=sample).output.plan
    return [shard.name for shard in read_shard_plan(plan)]


def parts(wildcards):
    return sample_parts(wildcards.sample)


def part_files(pattern):
    """`pattern` (with {sample} and {part}) for every part of the wildcards' sample."""
    return lambda wildcards: expand(
        pattern, sample=wildcards.sample, part=sample_parts(wildcards.sample)
    )


def shard_files(pattern):
    """`pattern` (with {sample} and {shard}) for every shard of the wildcards' sample."""
    return lambda wildcards: expand(
        pattern, sample=wildcards.sample, shard=sample_shards(wildcards.sample)
    )


def models_to_check(wildcards):
    """The model files that `check_models` reads: the classifier only when predicting."""
    models = {
        "dnabert_s": config["models"]["dnabert_s"],
        "esm2": config["models"]["esm2"],
    }
    if wildcards.purpose == "predict":
        models["classifier"] = CLASSIFIER
    return models


def models_checked(wildcards):
    """The model check that a sample's shard plan, and so its GPU work, waits for. Ancient: a
    check that reruns (a model changed) reruns no job by itself; the jobs that use the changed
    model rerun because it is their input."""
    purpose = "predict" if wildcards.sample in SAMPLES else "train"
    return ancient(f"results/checks/models.{purpose}.json")


def token_budget(kind):
    value = config["embedding"][f"{kind}_token_budget"]
    return None if value == "auto" else value


TRAINING_DIR = f"results/training/expected_length_{EXPECTED_LENGTH}"


def training_inputs(wildcards):
    """Per training input, the files of its stages 1-7 (named `<input>__<kind>`)."""
    if not TRAINING_INPUTS:
        raise ValueError(
            f"config: training.inputs '{TRAINING_TABLE}' does not exist "
            "(a tab-separated table with columns name, path, label)"
        )
    files = {}
    for row in TRAINING_INPUTS:
        name = row["name"]
        for kind in ("reads", "frames"):
            files[f"{name}__{kind}"] = expand(
                f"results/{name}/{kind}/{{part}}.arrow", part=sample_parts(name)
            )
        for kind, suffix in (
            ("merged", "json"),
            ("dnabert_s", "arrow"),
            ("esm2", "arrow"),
        ):
            files[f"{name}__{kind}"] = expand(
                f"results/{name}/features/{kind}/{{shard}}.{suffix}",
                shard=sample_shards(name),
            )
    return files
