from snakemake.utils import validate

from virnucpro.report import STAGES
from virnucpro.sharding import shard_names
from virnucpro.workflow_config import (
    read_training_inputs,
    resolve_classifier_path,
    resolve_samples,
    resolve_shard_count,
)


validate(config, "../schemas/config.schema.yaml")

SAMPLES = resolve_samples(config)
TRAINING_INPUTS = read_training_inputs(config["training"]["inputs"])
clashes = set(SAMPLES) & {row["name"] for row in TRAINING_INPUTS}
if clashes:
    raise ValueError(f"config: samples and training inputs share names {sorted(clashes)}")
# Every sequence file the stages 1-7 may process, prediction samples and training inputs alike.
INPUTS = {**SAMPLES, **{row["name"]: row["path"] for row in TRAINING_INPUTS}}
EXPECTED_LENGTH = config["expected_length"]
GPUS_GRANTED = workflow.global_resources.get("gpu")  # --resources gpu=N, if given
SHARDS = shard_names(
    resolve_shard_count(
        config["shards"], GPUS_GRANTED.value if GPUS_GRANTED is not None else 0
    )
)
CLASSIFIER = resolve_classifier_path(config)
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
