"""The whole Snakemake workflow on a small input, with the built-in models, on the CPU."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys

import base64
import io

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import REPO, SNAKEMAKE, run_workflow, write_config, write_input
from report_screenshot import find_chromium, rendered_dom, report_data, screenshot

pytestmark = pytest.mark.workflow


def test_every_read_is_accounted_for(one_shard_run):
    workdir, read_ids = one_shard_run
    table = pq.read_table(workdir / "results/reads/read_predictions.parquet")
    assert table.column("read_id").to_pylist() == read_ids
    rows = {row["read_id"]: row for row in table.to_pylist()}
    assert rows["empty_read"]["reason"] == "empty_sequence"
    assert rows["two_bases"]["reason"] == "too_short"
    assert rows["one_codon"]["reason"] == "below_min_codons" and rows["one_codon"]["score_virus"] is not None
    assert "one_codon_chunk_1F1\t" in (workdir / "results/reads/prediction_results.txt").read_text()  # VirNucPro's
    assert rows["all_n"]["reason"] == "too_ambiguous"
    assert rows["stop_in_every_frame"]["reason"] == "no_stop_free_frame"
    assert rows["protein_in_iupac_letters"]["reason"] == "too_ambiguous"
    for row in table.to_pylist():
        assert (row["call"] is None) == (row["reason"] is not None)
        assert row["call"] in (None, "virus", "provirus", "others")
    assert rows["lowercase_multiline"]["call"] is not None  # its header: free-text origin=, Latin-1


def test_an_input_that_looks_like_protein_is_warned_about(one_shard_run):
    workdir, _ = one_shard_run
    telemetry = json.loads((workdir / "results/telemetry/chunk/reads.000.json").read_text())
    assert len(telemetry["warnings"]) == 1
    assert "1 of 47 reads of this part look like protein" in telemetry["warnings"][0]
    assert "'protein_in_iupac_letters'" in telemetry["warnings"][0]
    assert telemetry["warnings"][0] in (workdir / "results/logs/chunk/reads.000.log").read_text()


def test_outputs_cover_every_identified_frame(one_shard_run):
    workdir, _ = one_shard_run
    results = workdir / "results/reads"
    assert (results / "shards/000.tsv").read_text().count("\n") == 2  # the header and one shard
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
    assert stages == {"check_models", "partition_input", "chunk", "translate", "plan_shards", "check_read_ids",
                      "tokenize_nucleotide", "tokenize_protein", "embed_dnabert_s", "embed_esm2", "predict_frames",
                      "consensus", "viral_fasta", "read_table_tsv", "collect_fasta", "summarize_sample", "run_summary",
                      "timing_report"}
    for job in jobs:
        assert job["status"] == "ok"
        assert job["wall_seconds"] > 0 and job["cpu_seconds"] >= 0
        assert 0 < job["peak_rss_mb"] <= job["memory_bound_mb"]
        assert job["host"] and job["start"] < job["end"]
        assert job["bytes_out"] > 0
    assert len({job["run_id"] for job in jobs}) == 1  # one run
    embedding = next(job for job in jobs if job["stage"] == "embed_esm2")
    assert embedding["details"]["device"] == "cpu"
    assert embedding["details"]["tokens"] > 0 and embedding["details"]["batches"] > 0
    assert 0 < embedding["details"]["packing_efficiency"] <= 1
    assert sum(embedding["details"]["batch_timeline"]["tokens"]) == embedding["details"]["tokens"]
    report = (workdir / "results/timing_report.md").read_text()
    for stage in stages - {"timing_report", "run_summary"}:  # the report covers the samples' jobs and model check
        assert f"| {stage} |" in report
    assert "check_models predict_300.all ok" in (workdir / "results/logs/check_models/predict_300.all.log").read_text()
    table = pl.read_parquet(workdir / "results/telemetry.parquet")
    assert table.height == len(jobs) - 2 and table["run_id"].unique().to_list() == [jobs[0]["run_id"]]
    batches = pl.read_parquet(workdir / "results/telemetry_batches.parquet")
    assert batches["tokens"].sum() == sum(job["details"]["tokens"] for job in jobs if job["stage"].startswith("embed"))
    assert pl.read_parquet(workdir / "results/telemetry_gpu_samples.parquet").height == 0  # no GPU here


def test_the_summary_counts_what_the_read_table_holds(one_shard_run):
    workdir, read_ids = one_shard_run
    results = workdir / "results/reads"
    reads = pl.read_parquet(results / "read_predictions.parquet")
    summary = {line.split("\t")[0]: line.split("\t")[1] for line in (results / "summary.tsv").read_text().splitlines()}
    assert summary["reads"] == str(len(read_ids))
    for call in ("virus", "others"):
        assert summary[call] == str(reads.filter(pl.col("call") == call).height)
    for reason in ("empty_sequence", "too_short", "below_min_codons", "too_ambiguous", "no_stop_free_frame"):
        assert summary[f"unclassified_{reason}"] == str(reads.filter(pl.col("reason") == reason).height)
    assert summary["chunks"] == str(reads["chunks"].sum()) and summary["frames"] == str(reads["frames"].sum())
    regions = pl.read_csv(results / "viral_regions.tsv", separator="\t")
    assert regions.height == reads["viral_regions"].sum()
    assert int(summary["their_viral_regions"]) == reads.filter(pl.col("chunks") > 1)["viral_regions"].sum()
    assert regions.join(reads, left_on="sequence_id", right_on="read_id")["call"].is_not_null().all()
    assert ((regions["start"] >= 1) & (regions["end"] <= regions["sequence_length"])).all()
    run = (workdir / "results/run_summary.tsv").read_text().splitlines()
    assert run[0] == "measure\treads" and f"virus\t{summary['virus']}" in run
    assert summary["calls_preset"] == "default" and summary["file_viral_sequences"] == "results/reads/viral_sequences.fna"
    tsv = pl.read_csv(results / "read_predictions.tsv.gz", separator="\t")
    assert tsv["read_id"].to_list() == reads["read_id"].to_list() and tsv["call"].to_list() == reads["call"].to_list()


def test_viral_sequences_are_the_input_records_called_virus_byte_for_byte(one_shard_run):
    from Bio import SeqIO

    workdir, _ = one_shard_run
    reads = pl.read_parquet(workdir / "results/reads/read_predictions.parquet")
    with open(workdir / "reads.fa", encoding="latin-1") as handle:  # one header is Latin-1
        given = {record.id: str(record.seq) for record in SeqIO.parse(handle, "fasta")}
    written = list(SeqIO.parse(workdir / "results/reads/viral_sequences.fna", "fasta"))
    assert [record.id for record in written] == reads.filter(pl.col("call") == "virus")["read_id"].to_list()
    assert written and all(str(record.seq) == given[record.id] for record in written)
    assert (workdir / "results/reads/viral_regions.fna").exists()
    telemetry = json.loads((workdir / "results/telemetry/viral_fasta/reads.all.json").read_text())
    assert telemetry["details"]["viral_sequences"] == len(written)


def test_outputs_say_when_they_come_from_the_demonstration_models(one_shard_run, tmp_path):
    from virnucpro.run.config import BUILTIN_MODELS_NOTE, models_note

    workdir, _ = one_shard_run
    metadata = pq.read_schema(workdir / "results/reads/read_predictions.parquet").metadata
    assert metadata[b"virnucpro.note"].decode() == BUILTIN_MODELS_NOTE
    assert f"**Note:** {BUILTIN_MODELS_NOTE}" in (workdir / "results/timing_report.md").read_text()
    assert f"note\t{BUILTIN_MODELS_NOTE}\t" in (workdir / "results/reads/summary.tsv").read_text()
    assert BUILTIN_MODELS_NOTE in (workdir / "results/report/run_summary.html").read_text()
    builtin = REPO / "resources/models"
    real = [tmp_path / "DNABERT-S", tmp_path / "esm2_t36_3B_UR50D.pt", tmp_path / "300_model.pth"]
    real[0].mkdir()
    (real[0] / "config.json").write_text("{}")
    real[1].write_bytes(b"other weights")
    real[2].write_bytes(b"other classifier")
    assert models_note(real, builtin) is None
    assert models_note([*real, builtin / "classifier_500.pt"], builtin) == BUILTIN_MODELS_NOTE
    # decided by what the models are, not where they lie: the built-in models copied elsewhere
    copies = shutil.copytree(builtin, tmp_path / "copies")
    assert models_note([copies / "dnabert_s_mini", *real[1:]], builtin) == BUILTIN_MODELS_NOTE


def test_results_do_not_depend_on_parts_shards_or_gpu_jobs_at_once(one_shard_run, tmp_path):
    """Bit for bit on the CPU: one part and one shard, one embedding job at a time, against several
    parts and shards with two embedding jobs at once (each leasing its device, as on two GPUs). The
    second run also keeps the merged feature vectors (outputs.merged_features)."""
    from virnucpro.io.features import FeatureFile
    from virnucpro.stages.sharding import read_shard_plan

    workdir, _ = one_shard_run
    shutil.copy(workdir / "reads.fa", tmp_path / "reads.fa")
    outputs = {"virnucpro_fasta": True, "merged_features": True}
    run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa", shard_tokens=1500, part_mb=0.003,
                                        outputs=outputs), "--resources", "gpu=2")
    many, one = tmp_path / "results/reads", workdir / "results/reads"
    assert len(list(many.glob("frames/*.arrow"))) > 1 and len(list(one.glob("frames/*.arrow"))) == 1
    assert len(list(many.glob("frame_predictions/*.parquet"))) > 1
    for name in ("chunked.fa", "identified_nucleotide.fa", "identified_protein.faa", "prediction_results.txt",
                 "prediction_results_highestscore.csv", "viral_regions.tsv", "summary.tsv"):
        assert (many / name).read_bytes() == (one / name).read_bytes(), name
    assert pq.read_table(many / "read_predictions.parquet").equals(pq.read_table(one / "read_predictions.parquet"))
    shards = [shard for plan in sorted(many.glob("shards/*.tsv")) for shard in read_shard_plan(plan)]
    merged = [FeatureFile(many / f"features/merged/{shard.name}.arrow") for shard in shards]
    assert [(file.row_start, file.row_end) for file in merged] == [(shard.row_start, shard.row_end) for shard in shards]
    assert [[model["kind"] for model in file.models] for file in merged] == [["dnabert_s", "esm2"]] * len(shards)


def test_a_second_run_reports_its_own_jobs_and_lists_the_first(one_shard_run, tmp_path):
    workdir, _ = one_shard_run
    shutil.copytree(workdir, tmp_path / "run", symlinks=True)  # with the same config: the same input file
    run_workflow(tmp_path / "run", tmp_path / "run" / "config.yaml", "--forcerun", "consensus")
    jobs = [json.loads(p.read_text()) for pattern in ("*/reads.*.json", "check_models/*.json")
            for p in (tmp_path / "run/results/telemetry").glob(pattern)]
    first, second = sorted({job["run_id"] for job in jobs})
    # consensus and what needs its deleted temporary inputs ran again; the stages before come from the first run
    pipeline = pl.read_parquet(tmp_path / "run/results/telemetry.parquet")["stage"].unique(maintain_order=True)
    again = sorted((job["stage"] for job in jobs if job["run_id"] == second), key=pipeline.to_list().index)  # one job each
    assert "consensus" in again and "partition_input" not in again
    report = (tmp_path / "run/results/timing_report.md").read_text()
    stages_part, runs_part = report.split("## Runs")
    assert re.search(rf"^Run {second}, started [^:]+:\d\d:\d\d UTC: {len(again)} jobs, 0 failed;", report,
                     re.MULTILINE), report
    assert re.findall(r"^\| (\w+) \| \d+ \| \d+ \| [\d.]+ \|", stages_part, re.MULTILINE) == again
    runs = re.findall(r"^\| (\S+) \| [\d-]+ [\d:]+ \| (\d+) \|", runs_part, re.MULTILINE)
    assert runs == [(first, str(len(jobs) - len(again))), (second, str(len(again)))]


@pytest.fixture(scope="module")
def html_report(one_shard_run):
    """`snakemake --report` of the one-shard run."""
    workdir, _ = one_shard_run
    run_workflow(workdir, workdir / "config.yaml", "--report", str(workdir / "report.html"))
    return workdir / "report.html"


REPORT_ITEMS = {
    "results/reads/summary.tsv": "text/tab-separated-values", "results/reads/score_distribution.png": "image/png",
    "results/reads/score_tracks.png": "image/png",
    "results/report/calls_per_sample.png": "image/png", "results/report/run_summary.html": "text/html",
    "results/report/timing_report.html": "text/html", "results/report/job_timeline.png": "image/png",
    "results/report/gpu_usage.png": "image/png", "results/report/stage_times.png": "image/png",
    "results/report/embedding_throughput.png": "image/png",
}


def test_the_report_holds_the_results_the_figures_and_a_description(html_report):
    from PIL import Image

    results = report_data(html_report, "results")
    assert {path: item["mime_type"] for path, item in results.items()} == REPORT_ITEMS
    for path, item in results.items():
        assert item["caption"].strip(), path
        data = base64.b64decode(item["data_uri"].split("base64,", 1)[1])
        if item["mime_type"] == "image/png":
            image = Image.open(io.BytesIO(data))
            assert image.width >= 800 and image.height >= 150, path
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20, path  # not blank
    run_summary = base64.b64decode(results["results/report/run_summary.html"]["data_uri"].split(",", 1)[1]).decode()
    assert "<td>virus</td>" in run_summary and "<td>unclassified no stop free frame</td>" in run_summary
    assert set(report_data(html_report, "categories")) == {"Results", "Run telemetry"}
    # the first page opens on the results: the counts of every sample, the note, the longest calls
    first_page = report_data(html_report, "workflow_desc")
    assert "VirNucPro finds viral sequences" in first_page
    assert first_page.index("<h1>Results</h1>") < first_page.index("VirNucPro finds viral sequences")
    assert "<td>virus</td>" in first_page and "Note:" in first_page
    assert "reads: the longest sequences called virus or provirus" in first_page


@pytest.mark.skipif(find_chromium() is None, reason="needs Chromium (apt-get install chromium)")
def test_the_report_renders_in_chromium_with_its_figures(html_report, tmp_path, one_shard_run):
    from PIL import Image, ImageChops

    start = Image.open(screenshot(html_report, tmp_path / "start.png")).convert("RGB")
    timeline = Image.open(screenshot(html_report, tmp_path / "timeline.png",
                                     result="results/report/job_timeline.png")).convert("RGB")
    assert start.size == timeline.size == (1400, 900)
    for image in (start, timeline):
        assert len(image.getcolors(maxcolors=1 << 20)) > 50  # not blank
    # The opened figure fills the content area (right of the menu) with the figure's own pixels.
    content = (450, 100, 1350, 600)
    figure = Image.open(one_shard_run[0] / "results/report/job_timeline.png").convert("RGB")
    assert ImageChops.difference(start.crop(content), timeline.crop(content)).getbbox() is not None
    shown = timeline.crop(content).getcolors(maxcolors=1 << 20)
    figure_colours = {colour for _, colour in figure.getcolors(maxcolors=1 << 20)}
    assert sum(count for count, colour in shown if colour in figure_colours and colour != (255, 255, 255)) > 20_000
    # The start page shows the results: the samples' counts and their longest calls.
    dom = rendered_dom(html_report)
    assert "<td>virus</td>" in dom and "reads: the longest sequences called virus or provirus" in dom
    # The score tracks open as a figure, drawn in their own colours.
    tracks = Image.open(screenshot(html_report, tmp_path / "tracks.png", result="results/reads/score_tracks.png"))
    figure = Image.open(one_shard_run[0] / "results/reads/score_tracks.png").convert("RGB")
    figure_colours = {colour for _, colour in figure.getcolors(maxcolors=1 << 20)} - {(255, 255, 255)}
    shown = tracks.convert("RGB").crop(content).getcolors(maxcolors=1 << 20)
    assert sum(count for count, colour in shown if colour in figure_colours) > 2_000


def test_snakemake_n_shows_the_plan_up_to_the_shard_plan(tmp_path, data_dir):
    write_input(tmp_path / "reads.fa", data_dir)
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa", part_mb=0.002), "-n")
    for rule, jobs in (("partition_input", 1), ("chunk", 3), ("translate", 3), ("plan_shards", 3)):
        assert re.search(rf"^{rule}\s+{jobs}$", result.stdout, re.MULTILINE), (rule, result.stdout)
    # With more jobs ready than cores, the first part's and the shard plans go first: the GPU starts early.
    jobs = re.findall(r"^(?:rule|checkpoint) (\w+):\n(.*?)^\s+resources:", result.stdout, re.MULTILINE | re.DOTALL)
    first = {(rule, re.search(r"part=(\d+)", body).group(1)) for rule, body in jobs
             if "part=" in body and "priority: 1" in body}
    assert first == {("chunk", "000"), ("translate", "000"), ("plan_shards", "000"), ("plan_shards", "001"),
                     ("plan_shards", "002")}


def test_a_parts_gpu_work_joins_the_run_once_its_plan_is_made(tmp_path, data_dir):
    """Not once every part is planned: the GPU starts on the first parts' shards while later parts
    are still being chunked and translated."""
    write_input(tmp_path / "reads.fa", data_dir, reads=10_000)  # 1.1 MB: records in more than one part
    config = write_config(tmp_path, tmp_path / "reads.fa", part_mb=0.3, shard_tokens=20_000)
    parts = [f"{part:03d}" for part in range(4)]
    for part in parts[:-1]:  # plan the parts up to the first one that made shards (keeping the parts for the rest)
        run_workflow(tmp_path, config, f"results/reads/shards/{part}.tsv", "--notemp")
        planned = sum(plan.read_text().count("\n") - 1 for plan in (tmp_path / "results/reads/shards").glob("*.tsv"))
        if planned:
            break
    assert planned and not (tmp_path / f"results/reads/shards/{parts[-1]}.tsv").exists()
    result = run_workflow(tmp_path, config, "-n")
    for rule in ("tokenize_protein", "embed_dnabert_s", "embed_esm2", "predict_frames"):
        assert re.search(rf"^{rule}\s+{planned}$", result.stdout, re.MULTILINE), (rule, result.stdout)


def test_bad_input_fails_with_a_clear_error_and_keeps_its_telemetry(tmp_path):
    (tmp_path / "reads.fa").write_text(">r1\nACGT\n>r2\nACGT\n>r1\nGGGG\n")
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa"), check=False)
    assert result.returncode != 0
    telemetry = json.loads((tmp_path / "results/telemetry/check_read_ids/reads.all.json").read_text())
    assert telemetry["status"] == "failed"
    assert "reads.fa, record 'r1': duplicate sequence ID in records 1 and 3" in telemetry["error"]
    # The check does not hold up the GPU work, but the final outputs wait for it: none is written.
    for name in ("read_ids_checked.txt", "prediction_results.txt", "read_predictions.parquet"):
        assert not (tmp_path / "results/reads" / name).exists(), name
    assert not list((tmp_path / "results/reads").glob("*.fa*"))  # no FASTA of a refused input
    # the message alone, last, once: no traceback
    assert result.stderr.rstrip().splitlines()[-1] == f"Error: {tmp_path / 'reads.fa'}, record 'r1': duplicate " \
        "sequence ID in records 1 and 3 (IDs must be unique)"
    assert "Traceback" not in result.stdout + result.stderr
    assert (result.stdout + result.stderr).count("duplicate sequence ID") == 1
    assert not list((tmp_path / "results/reads").rglob(".*tmp*"))


def test_a_classifier_for_another_length_is_refused_before_any_gpu_work(tmp_path, data_dir):
    write_input(tmp_path / "reads.fa", data_dir, reads=3)
    config = write_config(tmp_path, tmp_path / "reads.fa", expected_length=500)
    models = yaml.safe_load(config.read_text())
    models["models"]["classifier"] = str(REPO / "resources/models/classifier_300.pt")
    config.write_text(yaml.safe_dump(models))
    result = run_workflow(tmp_path, config, check=False)
    assert result.returncode != 0
    telemetry = json.loads((tmp_path / "results/telemetry/check_models/predict_500.all.json").read_text())
    assert "classifier_300.pt: classifier was trained for expected length 300, but this run chunks to 500" in \
        telemetry["error"]
    for later in ("partition_input", "chunk", "plan_shards", "tokenize_protein", "embed_dnabert_s", "embed_esm2"):
        assert not (tmp_path / "results/telemetry" / later).exists(), later


def test_a_truncated_classifier_is_named_before_anything_runs(tmp_path):
    (tmp_path / "reads.fa").write_text(">r1\nACGTACGTAC\n")
    classifier = tmp_path / "classifier.pt"
    classifier.write_bytes((REPO / "resources/models/classifier_300.pt").read_bytes()[:300_000])  # a cut-off copy
    config = write_config(tmp_path, tmp_path / "reads.fa")
    settings = yaml.safe_load(config.read_text())
    settings["models"]["classifier"] = str(classifier)
    config.write_text(yaml.safe_dump(settings))
    result = run_workflow(tmp_path, config, check=False)
    assert result.returncode != 0
    assert result.stderr.rstrip().splitlines()[-1].startswith(
        f"Error: {classifier}: truncated or corrupt (300000 bytes): not a complete PyTorch checkpoint")
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "results/reads").exists()  # no stage ran: nothing that looks complete


def test_a_device_setting_this_machine_cannot_meet_is_refused_at_once(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "reads.fa").write_text(">r1\nACGT\n")
    config = write_config(tmp_path, tmp_path / "reads.fa")
    settings = yaml.safe_load(config.read_text())
    settings["embedding"]["device"] = "cuda"
    config.write_text(yaml.safe_dump(settings))
    result = run_workflow(tmp_path, config, check=False)
    assert result.returncode != 0
    assert "embedding.device is 'cuda' but no GPU is visible on" in result.stderr
    assert not (tmp_path / "results").exists()  # no job ran


def test_a_bad_config_value_is_named(tmp_path):
    (tmp_path / "reads.fa").write_text(">r1\nACGT\n")
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa", expected_length=400), "-n",
                          check=False)
    assert result.returncode != 0
    # in a dry run (-n) Snakemake prints to stdout
    assert result.stdout.rstrip().splitlines()[-1] == "Error: config: expected_length: 400 is not one of [300, 500]"
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa", shard_count=2), "-n",
                          check=False)
    assert "shard_count" in result.stderr + result.stdout


@pytest.mark.parametrize("given, problem", [("folder", "the input is a directory, not a FASTA or FASTQ file"),
                                            ("/dev/null", "the input is not a regular file but a device")])
def test_an_input_that_is_no_file_is_named_for_what_it_is(tmp_path, given, problem):
    given = str(tmp_path) if given == "folder" else given
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "unused.fa"), "-n", "--config",
                          f"input={given}", check=False)
    assert result.returncode != 0
    assert result.stdout.rstrip().splitlines()[-1].startswith(f"Error: {given}: {problem}")
    assert "Traceback" not in result.stdout and 'File "' not in result.stdout


def test_an_input_whose_name_is_not_utf8_is_refused_before_snakemake_starts(tmp_path):
    import os

    name = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.fa")
    with open(os.fsencode(name), "w") as out:
        out.write(">r1\nACGT\n")
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "unused.fa"), "--config", f"input={name}",
                          check=False)
    assert result.returncode != 0
    assert result.stderr.rstrip().splitlines()[-1] == f"Error: {tmp_path}/caf\\xe9.fa: the file name has a byte " \
        "that is not UTF-8, which Snakemake cannot record; rename the file (or link to it under a UTF-8 name)"
    assert not (tmp_path / "results").exists()


def test_input_on_the_command_line_names_the_sample(tmp_path):
    (tmp_path / "my.reads.fasta.gz").write_bytes(b"")  # only the plan is built: -n
    config = write_config(tmp_path, tmp_path / "unused.fa")
    result = run_workflow(tmp_path, config, "-n", "--config", f"input={tmp_path / 'my.reads.fasta.gz'}",
                          "expected_length=500")
    assert "results/my_reads/read_predictions.parquet" in result.stdout


def test_the_timing_report_waits_for_every_job_it_reports(one_shard_run):
    """Its inputs are the telemetry files it reads, so every rule of the samples' jobs and their model
    check comes before it, collect_fasta too (which no other job of the report needs)."""
    workdir, _ = one_shard_run
    graph = run_workflow(workdir, workdir / "config.yaml", "--rulegraph").stdout
    rules = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', graph, re.MULTILINE))
    before = {rules[a] for a, b in re.findall(r"^\s*(\d+) -> (\d+)$", graph, re.MULTILINE) if rules[b] == "timing_report"}
    # part_predicted is a marker with no job of work (no telemetry)
    assert before == set(rules.values()) - {"default", "run_summary", "timing_report", "part_predicted"}


def test_a_sample_named_like_a_folder_of_the_run_is_refused(tmp_path):
    (tmp_path / "reads.fa").write_text(">r1\nACGT\n")
    config = write_config(tmp_path, tmp_path / "reads.fa", samples={"telemetry": str(tmp_path / "reads.fa")})
    result = run_workflow(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert ("the name 'telemetry' is one that the run uses for its own files under results/ (reserved: all, checks, "
            "logs, report, telemetry, training)") in result.stdout + result.stderr


def test_no_rule_writes_a_benchmark_file():
    """Telemetry measures each job; Snakemake's benchmark files would be a second record that nothing
    reads (and a path that a planted symbolic link could redirect)."""
    for path in [REPO / "Snakefile", REPO / "workflow/Snakefile", *(REPO / "workflow/rules").glob("*.smk")]:
        assert not re.search(r"^\s*benchmark\s*:", path.read_text(), re.MULTILINE), path


def test_workflow_passes_lint():
    result = subprocess.run(SNAKEMAKE + ["--lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_are_formatted_with_snakefmt():
    result = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow/"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_train_target_makes_a_classifier_that_the_prediction_run_accepts(tmp_path, data_dir):
    """Stages 1-7 on labelled sequences, then training; the model then classifies reads."""
    from virnucpro.io.sequences import read_sequences

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
    report = (trained / "report.md").read_text()
    assert "ROC AUC" in report and "Held-out reads by length" in report
    assert sum(row["n"] for row in metrics["metrics"]["reads_by_length"]) == metrics["metrics"]["reads"]["n"]

    settings["models"]["classifier"] = str(trained / "classifier.pt")
    config.write_text(yaml.safe_dump(settings))
    run_workflow(tmp_path, config, "results/reads/read_predictions.parquet")  # the calls, not the reports
    table = pq.read_table(tmp_path / "results/reads/read_predictions.parquet")
    assert table.column("read_id").to_pylist() == reads
    assert set(table.column("classifier").to_pylist()) == {str(trained / "classifier.pt")}


def test_a_sample_sheet_gives_each_sample_its_expected_length_and_classifier(tmp_path, data_dir):
    write_input(tmp_path / "short.fa", data_dir, reads=3)
    write_input(tmp_path / "long.fa", data_dir, reads=3)
    (tmp_path / "samples.tsv").write_text("sample\tpath\texpected_length\n"
                                          f"short\t{tmp_path / 'short.fa'}\t\n"
                                          f"long\t{tmp_path / 'long.fa'}\t500\n")
    run_workflow(tmp_path, write_config(tmp_path, tmp_path / "unused.fa", samples=str(tmp_path / "samples.tsv")),
                 "results/short/read_predictions.parquet", "results/long/read_predictions.parquet")
    for sample, length in (("short", 300), ("long", 500)):
        table = pq.read_table(tmp_path / f"results/{sample}/read_predictions.parquet")
        assert set(table.column("expected_length").to_pylist()) == {length}
        assert set(table.column("classifier").to_pylist()) == {str(REPO / f"resources/models/classifier_{length}.pt")}
        models = json.loads(table.schema.metadata[b"virnucpro.models"])
        assert models["classifier"] == {"path": str(REPO / f"resources/models/classifier_{length}.pt")}


def test_a_genome_as_one_contig_is_called_by_its_share_of_viral_chunks(tmp_path, data_dir):
    """The lambda genome as one contig is a virus, a stretch of the Klebsiella chromosome is not
    (with the built-in models at 500 bp); the lambda genome comes out whole in viral_sequences.fna."""
    from Bio import SeqIO

    from virnucpro.io.sequences import read_sequences

    phage = next(read_sequences(data_dir / "lambda_virus.fa.gz"))
    host = next(read_sequences(data_dir / "Klebs_HS11286.fna.xz"))
    (tmp_path / "contigs.fa").write_text(f">{phage.id}\n{phage.sequence}\n>{host.id}\n{host.sequence[:40_000]}\n")
    run_workflow(tmp_path, write_config(tmp_path, tmp_path / "contigs.fa", expected_length=500))
    rows = {row["read_id"]: row for row in pq.read_table(tmp_path / "results/reads/read_predictions.parquet")
            .to_pylist()}
    assert rows[phage.id]["call"] == "virus" and rows[phage.id]["viral_chunk_fraction"] >= 0.5
    assert rows[host.id]["call"] != "virus" and rows[host.id]["viral_chunk_fraction"] < 0.5
    written = list(SeqIO.parse(tmp_path / "results/reads/viral_sequences.fna", "fasta"))
    assert [record.id for record in written] == [phage.id] and str(written[0].seq) == phage.sequence


def test_a_bad_sample_sheet_row_is_named(tmp_path):
    (tmp_path / "samples.tsv").write_text("sample\tpath\texpected_length\nok\treads.fa\t\nbad\treads.fa\t250\n")
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa", samples=str(tmp_path / "samples.tsv")),
                          "-n", check=False)
    assert result.returncode != 0
    assert "samples.tsv, line 3: expected_length: '250' is not one of ['300', '500']" in result.stdout + result.stderr


def test_a_sample_sheet_saved_with_a_byte_order_mark_is_read(tmp_path):
    (tmp_path / "reads.fa").write_text(">r1\nACGT\n")
    (tmp_path / "samples.tsv").write_bytes(b"\xef\xbb\xbfsample\tpath\nmine\treads.fa\n")  # as a spreadsheet saves it
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa", samples=str(tmp_path / "samples.tsv")),
                          "-n")
    assert "results/mine/read_predictions.parquet" in result.stdout


def test_a_whole_number_written_as_a_float_is_taken_as_the_integer(tmp_path):
    (tmp_path / "reads.fa").write_text(">r1\nACGT\n")
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa"), "-n", "--config",
                          "expected_length=500.0")
    assert "results/checks/models.predict_500.json" in result.stdout


def test_a_classifier_path_takes_only_the_expected_length_field(tmp_path):
    (tmp_path / "reads.fa").write_text(">r1\nACGT\n")
    config = write_config(tmp_path, tmp_path / "reads.fa")
    for setting, shown in (("models/{sample}.pt", "{sample}"), ("{expected_length.__class__}", "{expected_length.__class__}")):
        settings = yaml.safe_load(config.read_text())
        settings["models"]["classifier"] = setting
        config.write_text(yaml.safe_dump(settings))
        result = run_workflow(tmp_path, config, "-n", check=False)
        assert result.returncode != 0
        assert result.stdout.rstrip().splitlines()[-1] == f"Error: models.classifier '{setting}': {shown} is not " \
            "filled in; the only field of a classifier's path is {expected_length}"


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
        run_workflow(tmp_path, config, "results/reads/read_predictions.parquet")
    finally:
        server.http.shutdown()
        server.http.server_close()
    table = pq.read_table(tmp_path / "results/reads/read_predictions.parquet")
    models = json.loads(table.schema.metadata[b"virnucpro.models"])
    assert models["esm2"]["path"] == str(tmp_path / "torch/hub/checkpoints/esm2_t36_3B_UR50D.pt")
    assert {f["name"]: f["sha256"] for f in models["dnabert_s"]["files"]} == {
        name: hashlib.sha256(data).hexdigest() for name, data in served.items()}
    features = json.loads(next((tmp_path / "results/telemetry/embed_esm2").glob("reads.*.json")).read_text())
    assert features["details"]["model"]["files"] == models["esm2"]["files"]


def test_an_input_or_model_replaced_by_an_older_file_reruns_from_stage_1(tmp_path):
    """Snakemake alone reruns only for newer files: a replacement with an older modification time
    (a copy that keeps its time) must still rerun, and the results of the content before must not
    stay when the rerun fails."""
    import os

    reads = tmp_path / "reads.fa"
    reads.write_text("".join(f">r{i}\n{'ACGTTGCAAT' * 20}\n" for i in range(5)))
    classifier = tmp_path / "classifier.pt"
    shutil.copy(REPO / "resources/models/classifier_300.pt", classifier)
    config = write_config(tmp_path, reads)
    settings = yaml.safe_load(config.read_text())
    settings["models"]["classifier"] = str(classifier)
    config.write_text(yaml.safe_dump(settings))
    run_workflow(tmp_path, config)
    old_time = reads.stat().st_mtime_ns - 10**12
    replacement = tmp_path / "new.fa"
    replacement.write_text(">n1\nGGCATTACGT\n>n2\nTTGCATGCAA\n")
    os.utime(replacement, ns=(old_time, old_time))
    replacement.replace(reads)
    run_workflow(tmp_path, config)
    table = pq.read_table(tmp_path / "results/reads/read_predictions.parquet")
    assert table.column("read_id").to_pylist() == ["n1", "n2"]
    # a classifier replaced in place by one for another length: checked again, refused, no results left
    classifier.write_bytes((REPO / "resources/models/classifier_500.pt").read_bytes())
    os.utime(classifier, ns=(old_time, old_time))
    result = run_workflow(tmp_path, config, check=False)
    assert result.returncode != 0
    telemetry = json.loads((tmp_path / "results/telemetry/check_models/predict_300.all.json").read_text())
    assert "classifier was trained for expected length 500" in telemetry["error"]
    assert not [path.name for path in (tmp_path / "results/reads").iterdir() if path.is_file()]
