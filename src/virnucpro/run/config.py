"""Turning the validated config into what the Snakemake rules need (samples, shards, paths)."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from virnucpro.io.errors import VirnucproError
from virnucpro.io.identity import changed_identities, fingerprint, write_identities

# A sample's (or training input's) name: its results go to results/<name>/, and the rules' {sample}
# wildcard matches it (workflow/rules/common.smk).
SAMPLE_NAME = "[A-Za-z0-9][A-Za-z0-9_-]*"
_SEQUENCE_SUFFIXES = (".gz", ".xz", ".bz2", ".fa", ".fasta", ".fna", ".ffn", ".fq", ".fastq")
# Written beside a sample's results by its first job: which input file they are the results of.
INPUT_RECORD = "input_path.txt"
# The identity of each input's and model's content (`record_identities`).
IDENTITY_DIRECTORY = "results/checks/identity"


@dataclass(frozen=True)
class Sample:
    name: str
    path: str  # FASTA or FASTQ file
    expected_length: int  # VirNucPro's chunk length for this sample


def sample_name_from_path(path: str) -> str:
    """A sample name for `--config input=<file>`: the file name without sequence/compression suffixes."""
    name = Path(path).name
    while name.lower().endswith(_SEQUENCE_SUFFIXES):
        name = name[: name.rindex(".")]
    name = re.sub(r"[^A-Za-z0-9_-]", "_", name).lstrip("_-")
    return name or "sample"


def whole_numbers(config: dict, schema: dict) -> None:
    """Turn the whole floats that the schema accepts as integers (`--config expected_length=500.0`)
    into ints, in place: such keys name files (`predict_500`) and count things."""
    for key, rule in schema.get("properties", {}).items():
        value = config.get(key)
        if isinstance(value, dict):
            whole_numbers(value, rule)
        elif isinstance(value, float) and value.is_integer() and any(
                branch.get("type") == "integer" or all(isinstance(v, int) for v in branch.get("enum", [None]))
                for branch in (rule, *rule.get("oneOf", []))):
            config[key] = int(value)


def read_table(path: str, schema: str) -> list[tuple[int, dict[str, str]]]:
    """The rows of a tab-separated table with a header line, each as (line number, {column: cell}),
    every row validated against the JSON schema `schema` with Snakemake's `validate`. Empty cells
    are left out, so that an optional column may be blank in some rows."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    if not Path(path).is_file():
        raise VirnucproError(f"{path}: the table does not exist")
    with open(path, newline="", encoding="utf-8-sig") as handle:  # a byte-order mark, as spreadsheets write
        reader = csv.DictReader(handle, delimiter="\t")
        rows = [(reader.line_num, row) for row in reader]
        header = reader.fieldnames or []
    if len(header) < 2:
        raise VirnucproError(f"{path}: not a tab-separated table with a header line (found columns {header})")
    if not rows:
        raise VirnucproError(f"{path}: the table has no rows")
    table = []
    for line, row in rows:
        if None in row:
            raise VirnucproError(f"{path}, line {line}: more cells than the header's {len(header)} columns")
        cells = {column: value.strip() for column, value in row.items() if value is not None and value.strip()}
        try:
            validate(cells, schema, set_default=False)
        except WorkflowError as error:
            raise VirnucproError(f"{path}, line {line}: {schema_error(error)}") from None
        table.append((line, cells))
    return table


def schema_error(error: Exception) -> str:
    """What a failed `snakemake.utils.validate` found, in one line: the column or key and the problem."""
    from jsonschema import ValidationError

    cause = error.__cause__ or error.__context__  # validate raises its WorkflowError while handling this
    if not isinstance(cause, ValidationError):
        return str(error)
    where = ".".join(str(part) for part in cause.absolute_path)
    return f"{where}: {cause.message}" if where else cause.message


def read_sample_sheet(path: str, schema: str, default_expected_length: int) -> dict[str, Sample]:
    """The sample sheet: columns sample, path and optionally expected_length (see its schema)."""
    samples = {}
    for line, row in read_table(path, schema):
        name = row["sample"]
        if not re.fullmatch(SAMPLE_NAME, name):
            raise VirnucproError(f"{path}, line {line}: sample: '{name}' does not match '{SAMPLE_NAME}' (letters, digits, "
                                  "'_' and '-', starting with a letter or digit)")
        if name in samples:
            raise VirnucproError(f"{path}, line {line}: sample '{name}' is named twice; each sample needs a name of "
                             f"its own (its results go to results/{name}/)")
        samples[name] = Sample(name, row["path"], int(row.get("expected_length", default_expected_length)))
    return samples


def resolve_samples(config: dict, sheet_schema: str) -> dict[str, Sample]:
    """Sample name -> sample: `input` (one file) when given, else `samples`, a sample sheet (a path)
    or a mapping of name -> file."""
    length = config["expected_length"]
    if config.get("input"):
        name = sample_name_from_path(config["input"])
        samples = {name: Sample(name, config["input"], length)}
    elif isinstance(config.get("samples"), str):
        samples = read_sample_sheet(config["samples"], sheet_schema, length)
    elif config.get("samples"):
        samples = {name: Sample(name, path, length) for name, path in config["samples"].items()}
        for name in samples:
            if not re.fullmatch(SAMPLE_NAME, name):
                raise VirnucproError(f"config: sample name '{name}' may only use letters, digits, '_' and '-'")
    else:
        raise VirnucproError("config: no input; give --config input=<fasta>, a sample sheet or a 'samples' mapping")
    check_distinct_names(samples)
    for sample in samples.values():
        check_file_name(sample.path)
    return samples


def check_file_name(path: str) -> None:
    """Refuse a file name that is not valid UTF-8: Snakemake writes its inputs' names to its lock
    and metadata files as UTF-8 and would stop with a traceback."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise VirnucproError(f"{shown}: the file name has a byte that is not UTF-8, which Snakemake cannot "
                             "record; rename the file (or link to it under a UTF-8 name)") from None


def check_distinct_names(names) -> None:
    """Refuse names that differ only in case: on a case-insensitive file system (macOS, Windows)
    their results would share one folder."""
    folded = {}
    for name in names:
        other = folded.setdefault(name.casefold(), name)
        if other != name:
            raise VirnucproError(f"config: samples '{other}' and '{name}' differ only in case; their results would "
                             "share one folder on a case-insensitive file system: rename one")


def check_unreserved(names, reserved) -> None:
    """Refuse a sample or training input named as one of the run's own folders under results/ (or as
    its run-wide jobs): its results would mix with the run's."""
    for name in names:
        if name.casefold() in {word.casefold() for word in reserved}:
            raise VirnucproError(f"config: the name '{name}' is one that the run uses for its own files under results/ "
                                  f"(reserved: {', '.join(sorted(reserved))}): give the sample or training input another "
                                  "name")


def check_results_belong(name: str, path: str, results: str | os.PathLike = "results") -> None:
    """Refuse to put `path`'s results where another input's are: results/<name>/ records the input
    it was made from (`INPUT_RECORD`). Two files of the same name in different folders get the same
    sample name from `--config input=...`, and the second would silently replace the first's results."""
    record = Path(results) / name / INPUT_RECORD
    if not record.is_file():
        return
    recorded = record.read_text().strip()
    if recorded != input_identity(path):
        raise VirnucproError(
            f"results/{name}/ holds the results of {recorded} ({record}), not of {input_identity(path)}: give this "
            f"input another sample name (a sample sheet, or --config \"samples={{<name>: {path}}}\"), or remove "
            f"results/{name}/ to replace them")


def identity_record(kind: str, name: str) -> str:
    """Where the identity of an input (`kind` "input") or a model ("model") is recorded."""
    return f"{IDENTITY_DIRECTORY}/{kind}.{name}.txt"


def record_identities(inputs: dict[str, str], models: dict[str, str]) -> list[str]:
    """Record what identifies the content of each input and model by name (`virnucpro.io.identity`),
    rewriting a record only when it changes: the records are inputs of the first jobs, so that a
    file replaced by a different one reruns everything, even when the new file is older than the
    results. Returns the records rewritten."""
    changed = changed_identities({**{identity_record("input", name): path for name, path in inputs.items()
                                     if Path(path).is_file()},  # a missing one is refused when a job needs it
                                  **{identity_record("model", name): path for name, path in models.items()}})
    write_identities(changed)
    return list(changed)


def remove_stale_results(records_of: dict[str, list[str]]) -> list[str]:
    """Remove the results in results/<input>/ that are older than one of the input's identity
    records (`records_of`: input name -> the records of its file and of the models it uses): they
    are of a content before, and a run that then fails must leave none that look complete. Returns
    the inputs whose results were removed."""
    removed = []
    for name, records in records_of.items():
        changed = max((Path(record).stat().st_mtime_ns for record in records if Path(record).is_file()), default=None)
        stale = [path for path in Path("results", name).glob("*") if path.is_file() and not path.is_symlink()
                 and changed is not None and path.stat().st_mtime_ns < changed]
        for path in stale:
            path.unlink()
        removed += [name] if stale else []
    return removed


def input_identity(path: str | os.PathLike) -> str:
    """The input file as `INPUT_RECORD` names it: its absolute path, symbolic links resolved."""
    return str(Path(path).resolve())


def read_training_inputs(path: str, schema: str) -> list[dict]:
    """The labelled inputs of the `train` target: rows of name, path, label (viral or host)."""
    rows = read_table(path, schema)
    names = {}
    for line, row in rows:
        if not re.fullmatch(SAMPLE_NAME, row["name"]):
            raise VirnucproError(f"{path}, line {line}: name: '{row['name']}' does not match '{SAMPLE_NAME}' (letters, "
                                  "digits, '_' and '-', starting with a letter or digit)")
        if row["name"] in names:
            raise VirnucproError(f"{path}, line {line}: name '{row['name']}' is also on line {names[row['name']]}; "
                             "training input names must be unique")
        names[row["name"]] = line
        check_file_name(row["path"])
    check_distinct_names(names)
    return [row for _, row in rows]


def package_requirement() -> str:
    """A pip requirement for the virnucpro package that this process imports, from which the rules'
    conda environment installs its own copy: its source tree when it runs from a checkout (or an
    editable install), else the URL it was installed from, else its version."""
    import json
    from importlib.metadata import PackageNotFoundError, distribution

    import virnucpro

    source = Path(virnucpro.__file__).resolve().parents[2]
    if (source / "pyproject.toml").is_file() and (source / "src" / "virnucpro").is_dir():
        return str(source)
    try:
        installed = distribution("virnucpro")
    except PackageNotFoundError:
        raise VirnucproError(f"virnucpro is imported from {virnucpro.__file__}, which is neither a checkout nor an "
                         "installed package: set VIRNUCPRO_PACKAGE to a pip requirement for it") from None
    direct = json.loads(installed.read_text("direct_url.json") or "{}")
    if "vcs_info" in direct:
        return f"virnucpro @ {direct['vcs_info']['vcs']}+{direct['url']}@{direct['vcs_info']['commit_id']}"
    if "url" in direct:
        return f"virnucpro @ {direct['url']}"
    return f"virnucpro=={installed.version}"


# The presets of the config's `calls` (see `virnucpro.stages.consensus.CallRule`): `default` keeps
# VirNucPro's rule for reads of one chunk; `conservative` asks for a virus score of 0.8 as geNomad's
# conservative preset does (VirSorter2 suggests 0.9 for high confidence: set min_score_virus).
CALL_PRESETS = {
    "relaxed": {"min_score_virus": 0.0, "min_viral_chunk_fraction": 0.3, "min_provirus_length": 2000},
    "default": {"min_score_virus": 0.0, "min_viral_chunk_fraction": 0.5, "min_provirus_length": 5000},
    "conservative": {"min_score_virus": 0.8, "min_viral_chunk_fraction": 0.7, "min_provirus_length": 10000},
}


def call_rule(calls: dict) -> dict:
    """The config's `calls` as the call rule's settings: the preset's, replaced by those set."""
    return {"preset": calls["preset"],
            **{name: type(value)(value if calls.get(name) is None else calls[name])
               for name, value in CALL_PRESETS[calls["preset"]].items()}}


BUILTIN_MODELS_NOTE = ("These results come from the built-in demonstration models in resources/models: tiny "
                       "embedding models with random weights and a classifier trained only to tell phage lambda "
                       "from Klebsiella. They are not meaningful for real data; set models.* in the config to "
                       "the real DNABERT-S, ESM-2 3B and VirNucPro classifier.")


def models_note(model_paths, builtin_models: str | os.PathLike) -> str | None:
    """The warning that outputs carry when any of the run's models is a built-in demonstration model:
    one with the fingerprint of a model in `builtin_models` (resources/models), wherever it lies."""
    builtin = {fingerprint(path) for path in Path(builtin_models).iterdir()}
    return BUILTIN_MODELS_NOTE if any(fingerprint(path) in builtin for path in model_paths) else None
