"""kill -9 and resume: a run killed while a job of a chosen stage runs resumes with the same
command (README, "Resuming an interrupted run"), and its outputs equal those of a run that was
never interrupted, byte for byte, with nothing left over from the killed jobs.

The stages: chunk (stage 1, several outputs per job), plan_shards (the checkpoint), embed_esm2 (a
GPU stage; killed while its feature file is half written) and consensus (three outputs that must
appear together). One run is killed at each in turn, each time started again with the same command;
the last start completes it. The uninterrupted reference is the workflow tests' shared run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, SNAKEMAKE, run_workflow, write_config, write_input

pytestmark = pytest.mark.workflow

# What differs between two runs whatever happens: the record of when and how long, and the path
# and modification time of each run's own input (results/<sample>/input_path.txt, the identity records).
RUN_SPECIFIC_FILES = ("results/logs/", "results/telemetry/", "results/telemetry.parquet",
                "results/telemetry_gpu_samples.parquet", "results/telemetry_batches.parquet",
                "results/timing_report.md", "results/timing_report.tsv", "results/report/timing_report.html",
                "results/report/job_timeline.png", "results/report/gpu_usage.png", "results/report/stage_times.png",
                "results/report/embedding_throughput.png", "results/reads/input_path.txt",
                "results/checks/identity/")


def results(workdir: Path) -> dict[str, bytes | None]:
    """Every file under results/, with its bytes unless it is specific to the run."""
    return {str(path.relative_to(workdir)): None if str(path.relative_to(workdir)).startswith(RUN_SPECIFIC_FILES)
            else path.read_bytes() for path in sorted((workdir / "results").rglob("*")) if path.is_file()}


def wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the run ended before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.02)


def kill_when_running(workdir: Path, config: Path, stage: str) -> None:
    """Start the workflow and kill its whole process group with SIGKILL once a job of `stage` runs
    (for an embedding stage: once its output is being written)."""
    with open(workdir / "killed_run.log", "w") as log:
        run = subprocess.Popen(SNAKEMAKE + ["--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                                            "--configfile", str(config), "--cores", "2"],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    logs = workdir / "results" / "logs" / stage
    wait_for(lambda: any("started" in p.read_text() for p in logs.glob("*.log")) if logs.is_dir() else False,
             run, f"{stage} job")
    if stage.startswith("embed_"):
        features = workdir / "results" / "reads" / "features" / stage.removeprefix("embed_")
        wait_for(lambda: any(features.glob(".*.tmp-*")), run, f"half-written {stage} output")
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until every process of the run (its jobs too) is gone
        try:
            os.killpg(run.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail("processes of the killed run are still there")


def test_a_killed_run_resumes_with_the_same_command_to_the_same_outputs(one_shard_run, tmp_path, data_dir):
    write_input(tmp_path / "reads.fa", data_dir)
    config = write_config(tmp_path, tmp_path / "reads.fa")
    for index, stage in enumerate(("chunk", "plan_shards", "embed_esm2", "consensus")):
        kill_when_running(tmp_path, config, stage)  # the same command each time
        assert (tmp_path / ".snakemake" / "locks").is_dir(), stage  # what stopped a rerun before
        if index:  # a start after a kill
            assert "Removed the lock of an earlier run that is gone" in (tmp_path / "killed_run.log").read_text(), stage
        if stage == "embed_esm2":
            assert list((tmp_path / "results/reads/features/esm2").glob(".*.arrow.tmp-*"))

    resumed = run_workflow(tmp_path, config)  # the same command
    assert "Removed the lock of an earlier run that is gone" in resumed.stderr

    expected, got = results(one_shard_run[0]), results(tmp_path)
    assert sorted(got) == sorted(expected)  # the same files, and no leftovers (.<name>.tmp-<pid>, scratch)
    for name, content in expected.items():
        assert got[name] == content, name


def test_only_the_lock_of_a_run_that_is_gone_is_removed(tmp_path):
    from virnucpro.run.resume import record_owner, remove_stale_lock

    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "0.output.lock").write_text("results/reads/read_predictions.parquet\n")
    assert remove_stale_lock(locks) == []  # no record: left to Snakemake's error (--unlock)

    ended = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                              "from virnucpro.run.resume import record_owner; record_owner(Path(sys.argv[1]))",
                              str(locks)], env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert ended.wait() == 0  # a run that recorded itself and is gone
    record_owner(locks)  # and this process, a run still going
    assert remove_stale_lock(locks) == [] and (locks / "0.output.lock").exists()
    (locks / f"virnucpro-owner-{os.getpid()}.json").unlink()

    ended_record = json.loads((locks / f"virnucpro-owner-{ended.pid}.json").read_text())
    (locks / "virnucpro-owner-1.json").write_text(json.dumps({**ended_record, "host": "another-node", "pid": 1}))
    assert remove_stale_lock(locks) == [] and (locks / "0.output.lock").exists()  # another host: cannot tell
    (locks / "virnucpro-owner-1.json").unlink()

    assert remove_stale_lock(locks) == [ended_record]
    assert not locks.exists()


def test_a_second_run_is_told_which_run_uses_the_folder(tmp_path):
    """Snakemake's own advice, --unlock, would harm the run that holds the lock."""
    (tmp_path / "reads.fa").write_text(">r1\nACGTTGCAAT\n")
    config = write_config(tmp_path, tmp_path / "reads.fa")
    with open(tmp_path / "first_run.log", "w") as log:
        first = subprocess.Popen(SNAKEMAKE + ["--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                                              "--configfile", str(config), "--cores", "2"],
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        locks = tmp_path / ".snakemake" / "locks"
        wait_for(lambda: any(locks.glob("virnucpro-owner-*.json")) and any(locks.glob("*.output.lock")), first,
                 "lock of the first run")
        second = run_workflow(tmp_path, config, check=False)
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait()
    assert second.returncode != 0
    last = second.stderr.rstrip().splitlines()[-1]
    assert last.startswith(f"Error: another run of this workflow is using {tmp_path} (PID {first.pid}, started 20")
    assert "do not use --unlock" in last


def test_a_lock_folder_that_is_a_symbolic_link_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "virnucpro-owner-1.json").write_text(json.dumps({"host": "x", "pid": 1}) + "\n")
    (tmp_path / ".snakemake").mkdir()
    (tmp_path / ".snakemake" / "locks").symlink_to(elsewhere)
    (tmp_path / "reads.fa").write_text(">r1\nACGT\n")
    result = run_workflow(tmp_path, write_config(tmp_path, tmp_path / "reads.fa"), check=False)
    assert result.returncode != 0
    assert result.stderr.rstrip().splitlines()[-1] == (
        f"Error: .snakemake/locks is a symbolic link (to {elsewhere}): refused, the run's lock would be written and "
        "removed there; remove the link")
    assert sorted(path.name for path in elsewhere.iterdir()) == ["virnucpro-owner-1.json"]
    assert not (tmp_path / "results").exists()


def test_an_owner_record_replaces_a_link_planted_at_its_name(tmp_path):
    from virnucpro.run.resume import record_owner, running_owners

    locks, target = tmp_path / "locks", tmp_path / "target"
    locks.mkdir()
    target.write_text("untouched")
    (locks / f"virnucpro-owner-{os.getpid()}.json").symlink_to(target)
    record_owner(locks)
    assert target.read_text() == "untouched"
    assert [owner["pid"] for owner in running_owners(locks)] == [os.getpid()]
