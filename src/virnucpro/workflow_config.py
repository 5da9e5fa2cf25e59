"""Turning the validated config into what the Snakemake rules need (samples, shards, paths)."""

from __future__ import annotations

import re
from pathlib import Path

_SAMPLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# Labels of the training table, and the class index VirNucPro's MLP gives each.
TRAINING_LABELS = {"host": 0, "viral": 1}
_SEQUENCE_SUFFIXES = (".gz", ".xz", ".bz2", ".fa", ".fasta", ".fna", ".ffn", ".fq", ".fastq")


def sample_name_from_path(path: str) -> str:
    """A sample name for `--config input=<file>`: the file name without sequence/compression suffixes."""
    name = Path(path).name
    while name.lower().endswith(_SEQUENCE_SUFFIXES):
        name = name[: name.rindex(".")]
    name = re.sub(r"[^A-Za-z0-9_-]", "_", name).lstrip("_-")
    return name or "sample"


def resolve_samples(config: dict) -> dict[str, str]:
    """Sample name -> input file: `input` (one file) when given, else the `samples` table."""
    if config.get("input"):
        return {sample_name_from_path(config["input"]): config["input"]}
    samples = config.get("samples") or {}
    if not samples:
        raise ValueError("config: no input; give --config input=<fasta> or a 'samples' table")
    for name in samples:
        if not _SAMPLE_NAME.match(name):
            raise ValueError(f"config: sample name '{name}' may only use letters, digits, '_' and '-'")
    return dict(samples)


def unit_names(count: int) -> list[str]:
    """Names of `count` parts or shards: zero-padded numbers that sort in order."""
    width = max(3, len(str(count - 1)))
    return [f"{index:0{width}d}" for index in range(count)]


def resolve_classifier_path(config: dict) -> str:
    return config["models"]["classifier"].format(expected_length=config["expected_length"])


def read_training_inputs(path: str) -> list[dict]:
    """The labelled inputs of the `train` target: rows of name, path, label (viral or host)."""
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows or set(rows[0]) != {"name", "path", "label"}:
        raise ValueError(f"{path}: a training table needs the tab-separated columns name, path, label")
    for number, row in enumerate(rows, start=2):
        if not _SAMPLE_NAME.match(row["name"] or ""):
            raise ValueError(f"{path}, line {number}: name '{row['name']}' may only use letters, digits, '_' and '-'")
        if row["label"] not in TRAINING_LABELS:
            raise ValueError(f"{path}, line {number}: label must be one of {sorted(TRAINING_LABELS)}, "
                             f"got '{row['label']}'")
    names = [row["name"] for row in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: training input names must be unique")
    return rows


BUILTIN_MODELS_NOTE = ("These results come from the built-in demonstration models in resources/models: tiny "
                       "embedding models with random weights and a classifier trained only to tell phage lambda "
                       "from Klebsiella. They are not meaningful for real data; set models.* in the config to "
                       "the real DNABERT-S, ESM-2 3B and VirNucPro classifier.")


def models_note(config: dict, repository: str) -> str | None:
    """The warning that outputs carry when any model is one of the built-in demonstration models."""
    builtin = (Path(repository) / "resources" / "models").resolve()
    paths = [config["models"]["dnabert_s"], config["models"]["esm2"], resolve_classifier_path(config)]
    return BUILTIN_MODELS_NOTE if any(builtin in Path(p).resolve().parents for p in paths) else None
