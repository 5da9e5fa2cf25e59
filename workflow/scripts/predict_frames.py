# Stage 8: MLP prediction for every frame of one shard.
import functools

import torch

from virnucpro.models.classifier import check_compatible, load_classifier
from virnucpro.run.telemetry import JobTelemetry
from virnucpro.stages.prediction import predict_shard

with JobTelemetry.from_snakemake(snakemake) as telemetry:
    torch.set_num_threads(snakemake.threads)
    model, info = load_classifier(snakemake.input.classifier, snakemake.params.classifier_expected_length)
    check = functools.partial(check_compatible, info, snakemake.params.expected_length)
    frames = predict_shard(model, snakemake.input.nucleotide, snakemake.input.protein, snakemake.input.frames,
                           snakemake.input.reads, snakemake.output.predictions, snakemake.output.lines, check)
    telemetry.records_in = telemetry.records_out = frames
    telemetry.details = {"classifier": info.path, "classifier_format": info.source}
