"""Samples from the config: the sample sheet against its schema, `--config input=...`, a mapping, and
names that would make two inputs share one results folder."""

from __future__ import annotations

import pytest

from conftest import REPO
from virnucpro.run.config import (INPUT_RECORD, Sample, check_results_belong, check_unreserved, input_identity,
                                  read_training_inputs, resolve_samples, sample_name_from_path)

SCHEMA = str(REPO / "workflow/schemas/samples.schema.yaml")


def config(**settings) -> dict:
    return {"expected_length": 300, **settings}


def test_the_sample_sheet_gives_names_paths_and_expected_lengths(tmp_path):
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample\tpath\texpected_length\nreads\tx/reads.fa\t\ncontigs\ty/contigs.fa.gz\t500\n")
    assert resolve_samples(config(samples=str(sheet)), SCHEMA) == {
        "reads": Sample("reads", "x/reads.fa", 300), "contigs": Sample("contigs", "y/contigs.fa.gz", 500)}
    sheet.write_text("sample\tpath\nreads\tx/reads.fa\n")  # the optional column may be left out
    assert resolve_samples(config(samples=str(sheet)), SCHEMA) == {"reads": Sample("reads", "x/reads.fa", 300)}


@pytest.mark.parametrize("rows, message", [
    ("sample\tpath\texpected_length\na\tx.fa\t400\n", r"line 2: expected_length: '400' is not one of \['300', '500'\]"),
    ("sample\tpath\na b\tx.fa\n", r"line 2: sample: 'a b' does not match"),
    ("sample\tpath\na\t\n", r"line 2: 'path' is a required property"),
    ("sample\tpath\tlength\na\tx.fa\t300\n", r"line 2: Additional properties are not allowed \('length' was unexpected\)"),
    ("sample\tpath\na\tx.fa\textra\n", r"line 2: more cells than the header's 2 columns"),
    ("sample\tpath\na\tx.fa\na\ty.fa\n", r"line 3: sample 'a' is named twice"),
    ("sample,path\na,x.fa\n", r"not a tab-separated table with a header line"),
    ("sample\tpath\n", r"the table has no rows"),
])
def test_a_bad_sample_sheet_is_refused_naming_the_line(tmp_path, rows, message):
    sheet = tmp_path / "samples.tsv"
    sheet.write_text(rows)
    with pytest.raises(ValueError, match=rf"samples.tsv(, |: ){message}"):
        resolve_samples(config(samples=str(sheet)), SCHEMA)


def test_input_and_mapping(tmp_path):
    assert resolve_samples(config(input="data/my.reads.fastq.gz", samples="unused.tsv"), SCHEMA) == {
        "my_reads": Sample("my_reads", "data/my.reads.fastq.gz", 300)}
    assert resolve_samples(config(samples={"a": "x.fa"}, expected_length=500), SCHEMA) == {"a": Sample("a", "x.fa", 500)}
    with pytest.raises(ValueError, match="sample name 'a/b' may only use"):
        resolve_samples(config(samples={"a/b": "x.fa"}), SCHEMA)
    with pytest.raises(ValueError, match="no input"):
        resolve_samples(config(), SCHEMA)


def test_names_that_differ_only_in_case_are_refused():
    with pytest.raises(ValueError, match="samples 'Reads' and 'reads' differ only in case"):
        resolve_samples(config(samples={"Reads": "x/reads.fa", "reads": "y/reads.fa"}), SCHEMA)


def test_results_of_another_input_of_the_same_name_are_not_replaced(tmp_path, monkeypatch):
    """x/reads.fa and y/reads.fa are both sample 'reads' by `--config input=...`."""
    monkeypatch.chdir(tmp_path)
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "reads.fa").write_text(">r\nACGT\n")
    assert sample_name_from_path("x/reads.fa") == sample_name_from_path("y/reads.fa") == "reads"
    check_results_belong("reads", "x/reads.fa")  # no results yet
    (tmp_path / "results" / "reads").mkdir(parents=True)
    (tmp_path / "results" / "reads" / INPUT_RECORD).write_text(input_identity("x/reads.fa") + "\n")
    check_results_belong("reads", "x/reads.fa")
    check_results_belong("reads", str(tmp_path / "x" / "reads.fa"))  # the same file, however it is named
    with pytest.raises(ValueError, match=rf"results/reads/ holds the results of {tmp_path}/x/reads.fa .*, not of "
                                         rf"{tmp_path}/y/reads.fa: give this input another sample name"):
        check_results_belong("reads", "y/reads.fa")


def test_a_name_the_run_uses_for_its_own_files_is_refused():
    check_unreserved(["reads", "logs2"], {"all", "logs", "telemetry"})
    for name in ("telemetry", "Logs"):  # in any case: a case-insensitive file system
        with pytest.raises(ValueError, match=rf"the name '{name}' is one that the run uses for its own files under "
                                             r"results/ \(reserved: all, logs, telemetry\)"):
            check_unreserved(["reads", name], {"all", "logs", "telemetry"})


def test_a_training_input_name_follows_the_sample_name_pattern(tmp_path):
    table = tmp_path / "training.tsv"
    table.write_text("name\tpath\tlabel\nlambda\tx.fa\tviral\n_host\ty.fa\thost\n")
    with pytest.raises(ValueError, match=r"training.tsv, line 3: name: '_host' does not match"):
        read_training_inputs(str(table), str(REPO / "workflow/schemas/training_inputs.schema.yaml"))


def test_a_replaced_input_or_model_makes_its_results_go(tmp_path, monkeypatch):
    import os
    import time
    from pathlib import Path

    from virnucpro.run.config import identity_record, record_identities, remove_stale_results

    monkeypatch.chdir(tmp_path)
    for name in ("a", "b", "esm2", "classifier_500"):
        (tmp_path / name).write_text(name)
        os.utime(tmp_path / name, ns=(10**18, 10**18))
    inputs = {"a": str(tmp_path / "a"), "b": str(tmp_path / "b")}
    models = {name: str(tmp_path / name) for name in ("esm2", "classifier_500")}
    # a uses the ESM-2 model only, b the classifier as well
    records_of = {"a": [identity_record("input", "a"), identity_record("model", "esm2")],
                  "b": [identity_record("input", "b"), identity_record("model", "esm2"),
                        identity_record("model", "classifier_500")]}

    def results():
        time.sleep(0.01)  # made after the records
        for name in inputs:
            Path("results", name).mkdir(parents=True, exist_ok=True)
            Path("results", name, "read_predictions.parquet").write_text("made")

    assert len(record_identities(inputs, models)) == 4
    results()
    assert record_identities(inputs, models) == [] and remove_stale_results(records_of) == []  # nothing changed
    (tmp_path / "a").write_text("A")  # same size, same time: its first bytes differ
    os.utime(tmp_path / "a", ns=(10**18, 10**18))
    assert record_identities(inputs, models) == [identity_record("input", "a")]
    assert remove_stale_results(records_of) == ["a"] and not Path("results/a/read_predictions.parquet").exists()
    assert Path("results/b/read_predictions.parquet").exists()
    results()
    os.utime(tmp_path / "classifier_500", ns=(10**17, 10**17))  # a model replaced by an older file
    assert record_identities(inputs, models) == [identity_record("model", "classifier_500")]
    assert remove_stale_results(records_of) == ["b"]  # not a, which does not use it
    assert record_identities(inputs, models) == []


def test_calls_take_the_presets_values_unless_set():
    from virnucpro.run.config import call_rule

    assert call_rule({"preset": "default"}) == {"preset": "default", "min_score_virus": 0.0,
                                                "min_viral_chunk_fraction": 0.5, "min_provirus_length": 5000}
    rule = call_rule({"preset": "conservative", "min_score_virus": 0.9, "min_viral_chunk_fraction": None})
    assert rule["min_score_virus"] == 0.9 and rule["min_viral_chunk_fraction"] == 0.7
    assert rule["min_provirus_length"] == 10000 and isinstance(rule["min_provirus_length"], int)
