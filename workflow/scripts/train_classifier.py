# The `train` target: train VirNucPro's MLP on the merged features of the labelled inputs.
import torch

from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.training import Hyperparameters, run_training

with JobTelemetry.from_snakemake(snakemake, "train_classifier") as telemetry:
    torch.set_num_threads(snakemake.threads)
    settings = snakemake.params.training
    inputs = [{**row, "reads": snakemake.input[f"{row['name']}__reads"],
               "frames": snakemake.input[f"{row['name']}__frames"],
               "views": snakemake.input[f"{row['name']}__merged"]} for row in snakemake.params.inputs]
    hyper = Hyperparameters(**{name: settings[name] for name in Hyperparameters.__dataclass_fields__})
    summary = run_training(inputs, snakemake.params.expected_length, settings["region_length"],
                           settings["holdout_fraction"], settings["validation_fraction"], settings["seed"], hyper,
                           dict(snakemake.output.items()))
    telemetry.records_in = sum(summary["frames"].values())
    telemetry.details = {"frames": summary["frames"], "metrics": summary["metrics"],
                         "best_epoch": summary["best_epoch"]}
