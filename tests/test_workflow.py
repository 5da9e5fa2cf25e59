"""The whole Snakemake workflow on a small input, with the built-in models, on the CPU."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
EDGE_CASES = {
    "empty_read": "",
    "two_bases": "AC",
    "all_n": "N" * 200,
    "stop_in_every_frame": "TTAA" * 50,  # its own reverse complement, TAA in every frame
    "lowercase_multiline": None,  # filled from a real read below
}


def write_input(path: Path, data_dir: Path, reads: int = 40) -> list[str]:
    """Real lambda reads from the shared FASTQ, plus reads that cannot be classified."""
    from virnucpro.sequence_io import read_sequences

    records = []
    for record in read_sequences(data_dir / "reads_1.fq.gz"):
        records.append((record.id, record.sequence))
        if len(records) == reads:
            break
    lowercase = records[0][1].lower() * 3
    with open(path, "w") as out:
        for read_id, sequence in records:
            out.write(f">{read_id}\n{sequence}\n")
        for read_id, sequence in EDGE_CASES.items():
            sequence = lowercase if sequence is None else sequence
            out.write(f">{read_id} edge case\n")
            out.write("".join(sequence[i : i + 70] + "\n" for i in range(0, len(sequence), 70)))
    return [r for r, _ in records] + list(EDGE_CASES)


def write_config(workdir: Path, input_path: Path, **overrides) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["samples"] = {"reads": str(input_path)}
    for key, path in config["models"].items():
        if isinstance(path, str):
            config["models"][key] = str(REPO / path)
    config["embedding"]["gpu_lock_dir"] = str(workdir / "locks")
    config.update(overrides)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_workflow(workdir: Path, config: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    command = SNAKEMAKE + ["--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                           "--configfile", str(config), "--cores", "2", *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def one_shard_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("run1")
    read_ids = write_input(workdir / "reads.fa", data_dir)
    run_workflow(workdir, write_config(workdir, workdir / "reads.fa"))
    return workdir, read_ids


def test_every_read_is_accounted_for(one_shard_run):
    workdir, read_ids = one_shard_run
    table = pq.read_table(workdir / "results/reads/read_predictions.parquet")
    assert table.column("read_id").to_pylist() == read_ids
    rows = {row["read_id"]: row for row in table.to_pylist()}
    assert rows["empty_read"]["reason"] == "empty_sequence"
    assert rows["two_bases"]["reason"] == "too_short"
    assert rows["all_n"]["reason"] == "too_ambiguous"
    assert rows["stop_in_every_frame"]["reason"] == "no_stop_free_frame"
    for row in table.to_pylist():
        assert (row["call"] is None) == (row["reason"] is not None)
        assert row["call"] in (None, "virus", "others")
    assert rows["lowercase_multiline"]["call"] is not None


def test_outputs_cover_every_identified_frame(one_shard_run):
    workdir, _ = one_shard_run
    results = workdir / "results/reads"
    assert (results / "shards.tsv").read_text().count("\n") == 2  # the header and one shard
    frames = [line[1:].strip() for line in open(results / "identified_protein.faa") if line.startswith(">")]
    rows = (results / "prediction_results.txt").read_text().splitlines()
    assert rows[0] == "Sequence_ID\tPrediction\tscore1\tscore2"
    assert [row.split("\t")[0] for row in rows[1:]] == frames
    for row in rows[1:]:
        _, label, score1, score2 = row.split("\t")
        assert abs(float(score1) + float(score2) - 1) < 1e-5
        assert label == ("virus" if float(score2) > float(score1) else "others")
    chunks = sorted({frame[:-2] for frame in frames})
    consensus = (results / "prediction_results_highestscore.csv").read_text().splitlines()
    assert consensus[0] == "Modified_ID\tIs_Virus"
    assert [line.split("\t")[0] for line in consensus[1:]] == chunks


def test_every_job_writes_telemetry_and_the_report_sums_them(one_shard_run):
    workdir, _ = one_shard_run
    jobs = [json.loads(p.read_text()) for p in (workdir / "results/telemetry").rglob("*.json")]
    stages = {job["stage"] for job in jobs}
    assert stages == {"partition_input", "chunk", "translate", "plan_shards", "split_nucleotide", "split_protein",
                      "embed_dnabert_s", "embed_esm2", "merge_features", "predict_frames", "consensus", "collect_fasta",
                      "timing_report"}
    for job in jobs:
        assert job["status"] == "ok"
        assert job["wall_seconds"] > 0 and job["cpu_seconds"] >= 0 and job["peak_rss_mb"] > 0
        assert job["host"] and job["start"] < job["end"]
        assert job["bytes_out"] > 0
    embedding = next(job for job in jobs if job["stage"] == "embed_esm2")
    assert embedding["details"]["device"] == "cpu"
    assert embedding["details"]["tokens"] > 0 and embedding["details"]["batches"] > 0
    assert 0 < embedding["details"]["packing_efficiency"] <= 1
    report = (workdir / "results/timing_report.md").read_text()
    for stage in stages - {"timing_report"}:
        assert f"| {stage} |" in report
    table = pq.read_table(workdir / "results/telemetry.parquet")
    assert table.num_rows == len(jobs) - 1  # all but the report's own


def test_outputs_say_when_they_come_from_the_demonstration_models(one_shard_run, tmp_path):
    from virnucpro.workflow_config import BUILTIN_MODELS_NOTE, models_note

    workdir, _ = one_shard_run
    metadata = pq.read_schema(workdir / "results/reads/read_predictions.parquet").metadata
    assert metadata[b"virnucpro.note"].decode() == BUILTIN_MODELS_NOTE
    assert f"**Note:** {BUILTIN_MODELS_NOTE}" in (workdir / "results/timing_report.md").read_text()
    real = [tmp_path / "DNABERT-S", tmp_path / "esm2_t36_3B_UR50D.pt", tmp_path / "300_model.pth"]
    assert models_note(real, REPO) is None
    assert models_note([*real, REPO / "resources/models/classifier_500.pt"], REPO) == BUILTIN_MODELS_NOTE


def test_results_do_not_depend_on_parts_or_shards(one_shard_run, tmp_path):
    """Bit for bit on the CPU: one part and one shard against many of each."""
    workdir, _ = one_shard_run
    shutil.copy(workdir / "reads.fa", tmp_path / "reads.fa")
    run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa", shard_tokens=400, part_mb=0.001))
    many, one = tmp_path / "results/reads", workdir / "results/reads"
    assert len(list(many.glob("frames/*.arrow"))) > 3 and len(list(one.glob("frames/*.arrow"))) == 1
    assert len(list(many.glob("frame_predictions/*.parquet"))) > 5
    for name in ("chunked.fa", "identified_nucleotide.fa", "identified_protein.faa", "prediction_results.txt",
                 "prediction_results_highestscore.csv"):
        assert (many / name).read_bytes() == (one / name).read_bytes(), name
    assert pq.read_table(many / "read_predictions.parquet").equals(pq.read_table(one / "read_predictions.parquet"))


def test_snakemake_n_shows_the_plan_up_to_the_shard_plan(tmp_path, data_dir):
    write_input(tmp_path / "reads.fa", data_dir)
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa", part_mb=0.002), "-n")
    for rule, jobs in (("partition_input", 1), ("chunk", 3), ("translate", 3), ("plan_shards", 1)):
        assert re.search(rf"^{rule}\s+{jobs}$", result.stdout, re.MULTILINE), (rule, result.stdout)


def test_bad_input_fails_with_a_clear_error_and_keeps_its_telemetry(tmp_path):
    (tmp_path / "reads.fa").write_text(">r1\nACGT\n>r2\nACGT\n>r1\nGGGG\n")
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa"), check=False)
    assert result.returncode != 0
    telemetry = json.loads((tmp_path / "results/telemetry/plan_shards/reads.all.json").read_text())
    assert telemetry["status"] == "failed"
    assert "reads.fa, record 'r1': duplicate sequence ID in records 1 and 3" in telemetry["error"]
    assert not (tmp_path / "results/reads/shards.tsv").exists()
    assert not (tmp_path / "results/telemetry/embed_esm2").exists()  # refused before any GPU work
    assert not list((tmp_path / "results/reads").rglob(".*tmp*"))


def test_a_classifier_for_another_length_is_refused(tmp_path, data_dir):
    write_input(tmp_path / "reads.fa", data_dir, reads=3)
    config = write_config(tmp_path, tmp_path / "reads.fa", expected_length=500)
    models = yaml.safe_load(config.read_text())
    models["models"]["classifier"] = str(REPO / "resources/models/classifier_300.pt")
    config.write_text(yaml.safe_dump(models))
    result = run_workflow(tmp_path, config, check=False)
    assert result.returncode != 0
    telemetry = json.loads((tmp_path / "results/telemetry/predict_frames/reads.000.json").read_text())
    assert "trained for expected length 300, but this run chunks to 500" in telemetry["error"]


def test_a_bad_config_value_is_named(tmp_path):
    (tmp_path / "reads.fa").write_text(">r1\nACGT\n")
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa", expected_length=400), "-n",
                          check=False)
    assert result.returncode != 0
    assert "expected_length" in result.stderr + result.stdout
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa", shard_count=2), "-n",
                          check=False)
    assert "shard_count" in result.stderr + result.stdout


def test_input_on_the_command_line_names_the_sample(tmp_path):
    (tmp_path / "my.reads.fasta.gz").write_bytes(b"")  # only the plan is built: -n
    config = write_config(tmp_path, tmp_path / "unused.fa")
    result = run_workflow(tmp_path, config, "-n", "--config", f"input={tmp_path / 'my.reads.fasta.gz'}",
                          "expected_length=500")
    assert "results/my_reads/read_predictions.parquet" in result.stdout


def test_workflow_passes_lint():
    result = subprocess.run(SNAKEMAKE + ["--lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_are_formatted_with_snakefmt():
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_train_target_makes_a_classifier_that_the_prediction_run_accepts(tmp_path, data_dir):
    """Stages 1-7 on labelled sequences, then training; the model then classifies reads."""
    from virnucpro.sequence_io import read_sequences

    host = next(read_sequences(data_dir / "Klebs_HS11286.fna.xz"))
    (tmp_path / "host.fa").write_text(f">{host.id}\n{host.sequence[:150_000]}\n")
    (tmp_path / "training.tsv").write_text(
        "name\tpath\tlabel\n"
        f"lambda\t{data_dir / 'lambda_virus.fa.gz'}\tviral\n"
        f"kpn\t{tmp_path / 'host.fa'}\thost\n")
    reads = write_input(tmp_path / "reads.fa", data_dir, reads=5)
    config = write_config(tmp_path, tmp_path / "reads.fa")
    settings = yaml.safe_load(config.read_text())
    settings["training"].update(inputs=str(tmp_path / "training.tsv"), max_epochs=5, patience=2)
    config.write_text(yaml.safe_dump(settings))

    run_workflow(tmp_path, config, "train")
    trained = tmp_path / "results/training/expected_length_300"
    held_out = (trained / "held_out_regions.tsv").read_text().splitlines()[1:]
    assert {line.split("\t")[1] for line in held_out} == {"viral", "host"}
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["metrics"]["frames"]["n"] > 0 and metrics["inputs"][0]["frames"] > 0
    assert "ROC AUC" in (trained / "report.md").read_text()

    settings["models"]["classifier"] = str(trained / "classifier.pt")
    config.write_text(yaml.safe_dump(settings))
    run_workflow(tmp_path, config)
    table = pq.read_table(tmp_path / "results/reads/read_predictions.parquet")
    assert table.column("read_id").to_pylist() == reads
    assert set(table.column("classifier").to_pylist()) == {str(trained / "classifier.pt")}


def test_a_sample_sheet_gives_each_sample_its_expected_length_and_classifier(tmp_path, data_dir):
    write_input(tmp_path / "short.fa", data_dir, reads=3)
    write_input(tmp_path / "long.fa", data_dir, reads=3)
    (tmp_path / "samples.tsv").write_text("sample\tpath\texpected_length\n"
                                          f"short\t{tmp_path / 'short.fa'}\t\n"
                                          f"long\t{tmp_path / 'long.fa'}\t500\n")
    run_workflow(tmp_path, write_config(tmp_path, tmp_path / "unused.fa", samples=str(tmp_path / "samples.tsv")))
    for sample, length in (("short", 300), ("long", 500)):
        table = pq.read_table(tmp_path / f"results/{sample}/read_predictions.parquet")
        assert set(table.column("expected_length").to_pylist()) == {length}
        assert set(table.column("classifier").to_pylist()) == {str(REPO / f"resources/models/classifier_{length}.pt")}
        models = json.loads(table.schema.metadata[b"virnucpro.models"])
        assert models["classifier"] == {"path": str(REPO / f"resources/models/classifier_{length}.pt")}


def test_a_bad_sample_sheet_row_is_named(tmp_path):
    (tmp_path / "samples.tsv").write_text("sample\tpath\texpected_length\nok\treads.fa\t\nbad\treads.fa\t250\n")
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa", samples=str(tmp_path / "samples.tsv")),
                          "-n", check=False)
    assert result.returncode != 0
    assert "samples.tsv, line 3: expected_length: '250' is not one of ['300', '500']" in result.stdout + result.stderr


def test_two_inputs_of_the_same_name_do_not_share_results(one_shard_run, tmp_path):
    """--config input=x/reads.fa, then y/reads.fa: both would be sample 'reads'."""
    workdir, _ = one_shard_run
    other = tmp_path / "y" / "reads.fa"
    other.parent.mkdir()
    shutil.copy(workdir / "reads.fa", other)
    assert (workdir / "results/reads/input_path.txt").read_text() == f"{(workdir / 'reads.fa').resolve()}\n"
    result = run_workflow(workdir, write_config(workdir, workdir / "reads.fa"), "-n", "--config", f"input={other}",
                          check=False)
    assert result.returncode != 0
    assert (f"results/reads/ holds the results of {(workdir / 'reads.fa').resolve()} (results/reads/input_path.txt), "
            f"not of {other.resolve()}: give this input another sample name") in result.stdout + result.stderr
    # the same file again is the same sample
    run_workflow(workdir, write_config(workdir, workdir / "reads.fa"), "-n", "--config", f"input={workdir / 'reads.fa'}")


def test_models_named_in_the_config_are_downloaded_then_found(tmp_path, data_dir, monkeypatch):
    """download_models fetches the models that models.* name (here ESM-2 and DNABERT-S, served by a
    local server as the built-in models' files), and the run then finds them in the caches."""
    from test_download import ModelServer, serve_dnabert_s, serve_esm2

    server = ModelServer()
    server.thread.start()
    try:
        serve_esm2(server, REPO / "resources/models/esm2_mini.pt", tmp_path)
        served = serve_dnabert_s(server, REPO / "resources/models/dnabert_s_mini", weights="model.safetensors")
        for variable, value in (("TORCH_HOME", "torch"), ("HF_HOME", "huggingface"), ("VIRNUCPRO_CACHE", "virnucpro")):
            monkeypatch.setenv(variable, str(tmp_path / value))
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        monkeypatch.setenv("VIRNUCPRO_ESM_URL", f"{server.url}/fair-esm")
        monkeypatch.setenv("HF_ENDPOINT", f"{server.url}/hf")
        write_input(tmp_path / "reads.fa", data_dir, reads=3)
        config = write_config(tmp_path, tmp_path / "reads.fa")
        settings = yaml.safe_load(config.read_text())
        settings["models"].update(esm2="esm2_t36_3B_UR50D", dnabert_s="zhihan1996/DNABERT-S")
        config.write_text(yaml.safe_dump(settings))

        result = run_workflow(tmp_path, config, "-n", check=False)
        assert result.returncode != 0
        assert "models.dnabert_s 'zhihan1996/DNABERT-S' was not found. Looked for" in result.stdout + result.stderr
        run_workflow(tmp_path, config, "download_models")
        run_workflow(tmp_path, config)
    finally:
        server.http.shutdown()
        server.http.server_close()
    table = pq.read_table(tmp_path / "results/reads/read_predictions.parquet")
    models = json.loads(table.schema.metadata[b"virnucpro.models"])
    assert models["esm2"]["path"] == str(tmp_path / "torch/hub/checkpoints/esm2_t36_3B_UR50D.pt")
    assert {f["name"]: f["sha256"] for f in models["dnabert_s"]["files"]} == {
        name: hashlib.sha256(data).hexdigest() for name, data in served.items()}
    features = json.loads((tmp_path / "results/telemetry/embed_esm2/reads.000.json").read_text())
    assert features["details"]["model"]["files"] == models["esm2"]["files"]
