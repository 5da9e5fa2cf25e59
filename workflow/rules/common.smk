import os
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.io import strip_wildcard_constraints
from snakemake.logging import logger
from snakemake.utils import validate

from virnucpro.run.devices import job_gpus, lock_directory
from virnucpro.model_store.download import DEFAULT_MODELS, manifest_paths
from virnucpro.model_store.cache import ModelNotFound, locate_model, model_name
from virnucpro.stages.partition import part_count
from virnucpro.stages.sharding import read_shard_plan, shard_part
from virnucpro.run.resume import running_owners
from virnucpro.run.telemetry import RUN_ID_VARIABLE, new_run_id
from virnucpro.run.config import (
    INPUT_RECORD,
    SAMPLE_NAME,
    call_rule,
    check_results_belong,
    models_note,
    package_requirement,
    read_training_inputs,
    record_identities,
    remove_stale_results,
    identity_record,
    resolve_samples,
    schema_error,
    whole_numbers,
)
from virnucpro.io.errors import VirnucproError
from virnucpro.io.ids import unit_names

try:
    validate(config, "../schemas/config.schema.yaml")
except WorkflowError as error:
    raise VirnucproError(f"config: {schema_error(error)}") from None
with open(workflow.source_path("../schemas/config.schema.yaml")) as schema:
    whole_numbers(config, yaml.safe_load(schema))

# One identifier per Snakemake invocation, recorded in every job's telemetry so that the report
# tells this run's jobs from those of earlier runs. Set here in the main process; a job's own
# Snakemake process (a cluster job's, through envvars) inherits it and keeps it.
os.environ.setdefault(RUN_ID_VARIABLE, new_run_id())


envvars:
    RUN_ID_VARIABLE,


# The rules' conda environment (envs/virnucpro.yaml) installs this package from here.
os.environ.setdefault("VIRNUCPRO_PACKAGE", package_requirement())

# The checkout this workflow runs from (the folder above workflow/).
REPOSITORY = Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parents[1]
EXPECTED_LENGTH = config["expected_length"]
# Sample name -> Sample (path, expected_length): --config input=..., the sample sheet
# (validated against workflow/schemas/samples.schema.yaml) or a mapping name -> path.
SAMPLES = resolve_samples(
    config, workflow.source_path("../schemas/samples.schema.yaml")
)
for sample in SAMPLES.values():
    check_results_belong(sample.name, sample.path)
# The training table matters only to the `train` target; a run without it still works.
TRAINING_TABLE = config["training"]["inputs"]
TRAINING_INPUTS = (
    read_training_inputs(
        TRAINING_TABLE, workflow.source_path("../schemas/training_inputs.schema.yaml")
    )
    if Path(TRAINING_TABLE).exists()
    else []
)
clashes = set(SAMPLES) & {row["name"] for row in TRAINING_INPUTS}
if clashes:
    raise VirnucproError(
        f"config: samples and training inputs share names {sorted(clashes)}"
    )
# Every sequence file the stages 1-6 may process, prediction samples and training inputs alike.
INPUTS = {
    **{name: sample.path for name, sample in SAMPLES.items()},
    **{row["name"]: row["path"] for row in TRAINING_INPUTS},
}
# Stages 1-2 run over parts of each input; their number follows from the file's size, so it is
# known now, in every Snakemake process (the main one and each cluster job's).
PARTS = {
    name: unit_names(part_count(sample.path, config["part_mb"]))
    for name, sample in SAMPLES.items()
}
WRITE_FASTA = config["outputs"]["virnucpro_fasta"]
# The run's models, each models.* setting as the file or folder it names (a path, or a name found
# in its cache: see virnucpro.model_store.cache), with one classifier per expected length of the samples.
MODEL_SETTINGS = {
    "dnabert_s": ("dnabert_s", config["models"]["dnabert_s"], None),
    "esm2": ("esm2", config["models"]["esm2"], None),
    **{
        f"classifier_{length}": ("classifier", config["models"]["classifier"], length)
        for length in sorted({sample.expected_length for sample in SAMPLES.values()})
    },
}
# The model checks, by purpose: training (the embedding models), or predicting at an expected
# length (the embedding models and that length's classifier): the expected length each checks for
# and its classifier, if any.
MODEL_CHECKS = {
    "train": (EXPECTED_LENGTH, None),
    **{
        f"predict_{length}": (length, f"classifier_{length}")
        for length in sorted({sample.expected_length for sample in SAMPLES.values()})
    },
}
# Name -> path of each model that was found. One that was not is an error only when a job needs
# it (`model_path`), so that targets that need none, as download_models, run before they exist.
MODEL_PATHS = {}
MODELS_NOT_FOUND = {}
for name, (kind, setting, length) in MODEL_SETTINGS.items():
    try:
        MODEL_PATHS[name] = str(locate_model(kind, setting, length))
    except ModelNotFound as error:
        MODELS_NOT_FOUND[name] = str(error)
# What `download_models` fetches: the models that models.* name, or, when they name none (as the
# built-in models' paths do), the published ones: ESM-2 3B, DNABERT-S and VirNucPro's classifiers.
DOWNLOADS = {
    kind: model_name(kind, config["models"][kind])
    for kind in DEFAULT_MODELS
    if model_name(kind, config["models"][kind])
} or DEFAULT_MODELS
# Set when the run uses the built-in demonstration models (the same files, wherever they lie): the
# outputs then say so.
MODELS_NOTE = models_note(MODEL_PATHS.values(), REPOSITORY / "resources" / "models")
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

# A file replaced by another, even an older one, reruns everything from stage 1: the first jobs take
# the identity records of their input and models as inputs (see virnucpro.run.config.record_identities;
# the results they make stale go when the run starts, `remove_stale_results`). After the device
# check, so that a run refused there writes nothing, and not while another run uses the folder.
if workflow.is_main_process and not workflow.dryrun and not running_owners():
    record_identities(INPUTS, MODEL_PATHS)


wildcard_constraints:
    sample=SAMPLE_NAME,
    part="[0-9]+",
    shard="[0-9]+-[0-9]+",
    purpose="|".join(MODEL_CHECKS),


# The sample name of a job that serves the whole run (run_summary, timing_report, download_models).
RUN_WIDE = "all"


def job_logs(rule, sample=RUN_WIDE, unit="all"):
    """A job's log and telemetry (see virnucpro.run.telemetry), as a rule's `log:` entries:
    results/logs/<rule>/<sample>.<unit>.log and results/telemetry/<rule>/<sample>.<unit>.json,
    the unit being the job's part or shard, or "all"."""
    return {
        "log": f"results/logs/{rule}/{sample}.{unit}.log",
        "telemetry": f"results/telemetry/{rule}/{sample}.{unit}.json",
    }


def model_path(name):
    """The file or folder of one of MODEL_SETTINGS' models, or the error that says where it was looked for."""
    if name in MODELS_NOT_FOUND:
        raise ModelNotFound(MODELS_NOT_FOUND[name])
    return MODEL_PATHS[name]


def model_input(name):
    """`model_path(name)` as a rule's input, asked for when a job needs it."""
    return lambda wildcards: model_path(name)


def expected_length(wildcards):
    """The chunk length of the wildcards' sample; training inputs use the config's."""
    sample = SAMPLES.get(wildcards.sample)
    return EXPECTED_LENGTH if sample is None else sample.expected_length


def classifier_path(wildcards):
    return model_path(f"classifier_{expected_length(wildcards)}")


def run_models(wildcards):
    """Paths of the models that make a sample's calls, by kind (recorded in its read table)."""
    return {
        "dnabert_s": model_path("dnabert_s"),
        "esm2": model_path("esm2"),
        "classifier": classifier_path(wildcards),
    }


def sample_input(wildcards):
    return INPUTS[wildcards.sample]


def sample_parts(sample):
    """Part names of a sample (a training input gets its own the first time it is asked for)."""
    if sample not in PARTS:
        PARTS[sample] = unit_names(part_count(INPUTS[sample], config["part_mb"]))
    return PARTS[sample]


def part_shards(sample, part):
    """Names of the shards that a part's shard plan made (a checkpoint: known once stage 2 has run
    on the part and the earlier parts are planned)."""
    plan = checkpoints.plan_shards.get(sample=sample, part=part).output.plan
    return [shard.name for shard in read_shard_plan(plan)]


def sample_shards(sample):
    """Shard names of a sample, from all its parts' shard plans."""
    return [
        shard for part in sample_parts(sample) for shard in part_shards(sample, part)
    ]


# A part's shard plan (plan_shards' output).
SHARD_PLAN = "results/{sample}/shards/{part}.tsv"


def shard_plan(wildcards):
    """The shard plan of the part that the wildcards' shard belongs to."""
    return SHARD_PLAN.format(sample=wildcards.sample, part=shard_part(wildcards.shard))


def earlier_plans(wildcards):
    """The shard plans of the parts before the wildcards' part (its plan takes up the frames that
    they left)."""
    names = sample_parts(wildcards.sample)
    return expand(
        SHARD_PLAN,
        sample=wildcards.sample,
        part=names[: names.index(wildcards.part)],
    )


def is_last_part(wildcards):
    return wildcards.part == sample_parts(wildcards.sample)[-1]


def parts_up_to(pattern):
    """An input function: `pattern` for each of the sample's parts up to the wildcards' part (that
    of its shard, if any). The earlier parts' row counts place the part's rows in the sample's
    tables, and a shard's rows lie in its part and the parts before it."""

    def files(wildcards):
        part = (
            shard_part(wildcards.shard)
            if hasattr(wildcards, "shard")
            else wildcards.part
        )
        names = sample_parts(wildcards.sample)
        return expand(
            pattern, sample=wildcards.sample, part=names[: names.index(part) + 1]
        )

    return files


def input_part(directory, part):
    """The file of one part of the input in `partition_input`'s folder of parts."""
    return f"{directory}/{part}.arrow"


def input_part_files(wildcards, output):
    return [input_part(output.parts, part) for part in sample_parts(wildcards.sample)]


# Job priorities, for when there are more jobs ready than cores: the first part's stages 1-2, and
# the jobs between a part's frames and its embeddings, go first, so that the GPU work starts early
# and has work to do while the other parts are prepared. (The model check goes before everything.)
GPU_WORK_PRIORITY = 1


def first_part_first(wildcards):
    return (
        GPU_WORK_PRIORITY if wildcards.part == sample_parts(wildcards.sample)[0] else 0
    )


def part_files(pattern):
    """`pattern` (with {sample} and {part}) for every part of the wildcards' sample."""
    return lambda wildcards: expand(
        pattern, sample=wildcards.sample, part=sample_parts(wildcards.sample)
    )


def part_shard_files(pattern):
    """`pattern` (with {sample} and {shard}) for every shard that the wildcards' part's plan made."""
    return lambda wildcards: expand(
        pattern,
        sample=wildcards.sample,
        shard=part_shards(wildcards.sample, wildcards.part),
    )


def shard_files(pattern):
    """`pattern` (with {sample} and {shard}) for every shard of the wildcards' sample."""
    return lambda wildcards: expand(
        pattern, sample=wildcards.sample, shard=sample_shards(wildcards.sample)
    )


def check_purpose(sample):
    """The model check that a sample's (or training input's) GPU work waits for."""
    return (
        "train"
        if sample not in SAMPLES
        else f"predict_{SAMPLES[sample].expected_length}"
    )


def checked_length(wildcards):
    """The expected length that `check_models` checks the run's models for."""
    return MODEL_CHECKS[wildcards.purpose][0]


def checked_models(purpose):
    """Kind -> name (in MODEL_SETTINGS) of the models that a check for `purpose` reads: the
    classifier only when predicting."""
    names = {"dnabert_s": "dnabert_s", "esm2": "esm2"}
    classifier = MODEL_CHECKS[purpose][1]
    if classifier:
        names["classifier"] = classifier
    return names


def models_to_check(wildcards):
    """The model files that `check_models` reads."""
    return {
        kind: model_path(name)
        for kind, name in checked_models(wildcards.purpose).items()
    }


def models_checked(wildcards):
    """The model check that a sample's first job, and so all its work, waits for. Ancient: a check
    that reruns (its code changed) reruns no job by itself; a changed model reruns the sample's jobs
    through its identity record (`identity_records`)."""
    return ancient(f"results/checks/models.{check_purpose(wildcards.sample)}.json")


def sample_identity_records(sample):
    """The identity records of a sample's (or training input's) input and of the models it uses."""
    return [
        identity_record("model", name)
        for name in checked_models(check_purpose(sample)).values()
    ] + [identity_record("input", sample)]


def identity_records(wildcards):
    """The identity records of a model check's models, and for a sample's first job of
    its input too; those not yet written (in a dry run) are left out."""
    if hasattr(wildcards, "purpose"):
        records = [
            identity_record("model", name)
            for name in checked_models(wildcards.purpose).values()
        ]
    else:
        records = sample_identity_records(wildcards.sample)
    return [record for record in records if Path(record).is_file()]


def token_budget(kind):
    value = config["embedding"][f"{kind}_token_budget"]
    return None if value == "auto" else value


TRAINING_DIR = f"results/training/expected_length_{EXPECTED_LENGTH}"


def training_inputs(wildcards):
    """The training inputs, each with the files of its stages 1-6 (reads, frames, and the feature
    files of its shards, dnabert_s and esm2): the `train_classifier` job's inputs and its params.
    """
    if not TRAINING_INPUTS:
        raise VirnucproError(
            f"config: training.inputs '{TRAINING_TABLE}' does not exist "
            "(a tab-separated table with columns name, path, label)"
        )
    inputs = []
    for row in TRAINING_INPUTS:
        name = row["name"]
        check_results_belong(name, row["path"])
        files = {
            kind: expand(
                f"results/{name}/{kind}/{{part}}.arrow", part=sample_parts(name)
            )
            for kind in ("reads", "frames")
        }
        for kind in ("dnabert_s", "esm2"):
            files[kind] = expand(
                f"results/{name}/features/{kind}/{{shard}}.arrow",
                shard=sample_shards(name),
            )
        # training waits for the input's duplicate-ID check, as a sample's final outputs do
        files["read_ids_checked"] = [f"results/{name}/read_ids_checked.txt"]
        inputs.append({**row, **files})
    return inputs


def training_files(wildcards):
    return [
        path
        for entry in training_inputs(wildcards)
        for kind in ("reads", "frames", "dnabert_s", "esm2", "read_ids_checked")
        for path in entry[kind]
    ]


def merged_features(wildcards):
    """The merged vectors of every shard of the samples, when outputs.merged_features asks for them."""
    if not config["outputs"]["merged_features"]:
        return []
    return [
        path
        for sample in SAMPLES
        for path in expand(
            "results/{sample}/features/merged/{shard}.arrow",
            sample=sample,
            shard=sample_shards(sample),
        )
    ]


def reported_telemetry(wildcards):
    """The telemetry files of the samples' jobs and of the model checks they wait for (see
    job_logs), in the order of the rules in the workflow, less those of outputs that this run
    does not make: what the timing report covers, and waits for."""
    made = {
        "collect_fasta": WRITE_FASTA,
        "merge_features": config["outputs"]["merged_features"],
    }
    purposes = sorted({check_purpose(sample) for sample in SAMPLES})
    files = []
    for defined in workflow.rules:
        reported = {"purpose", "sample"} & set(defined.wildcard_names)
        if (
            not reported
            or not made.get(defined.name, True)
            or "telemetry" not in defined.log.keys()
        ):
            continue
        pattern = strip_wildcard_constraints(defined.log.telemetry)
        if "purpose" in defined.wildcard_names:
            files += expand(pattern, purpose=purposes)
        if "sample" in defined.wildcard_names:
            for sample in SAMPLES:
                units = {
                    unit: names(sample)
                    for unit, names in (
                        ("part", sample_parts),
                        ("shard", sample_shards),
                    )
                    if unit in defined.wildcard_names
                }
                files += expand(pattern, sample=sample, **units)
    return files
