# The `train` target: train VirNucPro's MLP on the merged features of the labelled inputs
# (each input with its reads, frames and feature files: workflow/rules/common.smk, training_inputs).
import torch

from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.training import Hyperparameters, run_training

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    torch.set_num_threads(snakemake.threads)
    settings = snakemake.params.training
    hyper = Hyperparameters(**{name: settings[name] for name in Hyperparameters.__dataclass_fields__})
    summary = run_training(snakemake.params.inputs, snakemake.params.expected_length, settings["region_length"],
                           settings["holdout_fraction"], settings["validation_fraction"], settings["seed"], hyper,
                           dict(snakemake.output.items()))
    telemetry.records_in = sum(summary["frames"].values())
    telemetry.details = {"frames": summary["frames"], "metrics": summary["metrics"],
                         "best_epoch": summary["best_epoch"]}
