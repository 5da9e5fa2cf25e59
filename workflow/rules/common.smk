import os
from pathlib import Path

from snakemake.utils import validate

from virnucpro.report import STAGES
from virnucpro.sharding import shard_names
from virnucpro.workflow_config import (
    models_note,
    read_training_inputs,
    resolve_classifier_path,
    resolve_samples,
    resolve_shard_count,
)


validate(config, "../schemas/config.schema.yaml")

SAMPLES = resolve_samples(config)
# The training table matters only to the `train` target; a run without it still works.
TRAINING_TABLE = config["training"]["inputs"]
TRAINING_INPUTS = (
    read_training_inputs(TRAINING_TABLE) if Path(TRAINING_TABLE).exists() else []
)
clashes = set(SAMPLES) & {row["name"] for row in TRAINING_INPUTS}
if clashes:
    raise ValueError(f"config: samples and training inputs share names {sorted(clashes)}")
# Every sequence file the stages 1-7 may process, prediction samples and training inputs alike.
INPUTS = {**SAMPLES, **{row["name"]: row["path"] for row in TRAINING_INPUTS}}
EXPECTED_LENGTH = config["expected_length"]
# --resources gpu=N, if given: a number, or a Resource holding it in newer Snakemake versions
GPUS_GRANTED = workflow.global_resources.get("gpu")
GPUS_GRANTED = getattr(GPUS_GRANTED, "value", GPUS_GRANTED)
# Jobs that a cluster executor (SLURM) starts get the main process's --config but not its
# --resources, so they could not count the shards themselves: the main process hands its count
# down in the environment (which the SLURM plugin exports to the jobs; envvars has other
# executors pass it on).
if workflow.is_main_process:
    os.environ["VIRNUCPRO_SHARDS"] = str(
        resolve_shard_count(config["shards"], GPUS_GRANTED)
    )


envvars:
    "VIRNUCPRO_SHARDS",


SHARDS = shard_names(int(os.environ["VIRNUCPRO_SHARDS"]))
CLASSIFIER = resolve_classifier_path(config)
# Set when the run uses the built-in demonstration models: the outputs then say so.
MODELS_NOTE = models_note(config, workflow.basedir)
# GPU rules ask for the standard `gpu` resource unless the embedding runs on the CPU.
GPU_PER_JOB = 0 if config["embedding"]["device"] == "cpu" else 1


wildcard_constraints:
    sample="[A-Za-z0-9][A-Za-z0-9_-]*",
    shard="[0-9]+",


def sample_input(wildcards):
    return INPUTS[wildcards.sample]


def token_budget(kind):
    value = config["embedding"][f"{kind}_token_budget"]
    return None if value == "auto" else value


def telemetry_paths():
    """Telemetry files of every job of this run, for the timing report."""
    sharded = {"embed_dnabert_s", "embed_esm2", "merge_features", "predict_frames"}
    return [
        f"results/telemetry/{stage}/{sample}.{shard}.json"
        for sample in SAMPLES
        for stage in STAGES
        for shard in (SHARDS if stage in sharded else ["all"])
    ]


TRAINING_DIR = f"results/training/expected_length_{EXPECTED_LENGTH}"


def training_files(pattern):
    """`pattern` for every training input; asked for only when the `train` target is built."""

    def files(wildcards):
        if not TRAINING_INPUTS:
            raise ValueError(
                f"config: training.inputs '{TRAINING_TABLE}' does not exist "
                "(a tab-separated table with columns name, path, label)"
            )
        names = [row["name"] for row in TRAINING_INPUTS]
        return expand(pattern, sample=names, shard=SHARDS)

    return files
