"""SLURM support: the plan that profiles/slurm gives, and (VIRNUCPRO_SLURM_TEST=1) a real run through
a one-node SLURM cluster started on this machine by tests/slurm/run_local_slurm.sh."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PROFILE = REPO / "profiles" / "slurm"
SCRIPT = REPO / "tests" / "slurm" / "run_local_slurm.sh"
GPU_RULES = {"embed_dnabert_s", "embed_esm2"}


def profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def absolute_config(workdir: Path, **overrides) -> Path:
    """The demo config with its repository paths made absolute, for a run in another directory."""

    def absolute(node: dict) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                absolute(value)
            elif isinstance(value, str) and not value.startswith("/") and "/" in value:
                if (REPO / value.split("/")[0]).is_dir():  # a path in the repository
                    node[key] = str(REPO / value)

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    absolute(config)
    # the sample sheet's paths are relative to the working directory: name the demo input directly
    config["samples"] = {"demo": str(REPO / "resources" / "demo" / "demo_reads.fa")}
    config.update(overrides)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def names(node) -> set[str]:
    """Every key of a parsed profile, also those of NAME=VALUE list entries."""
    if isinstance(node, dict):
        return set(node).union(*(names(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(names(item) for item in node))
    return {node.split("=")[0].split(":")[-1]} if isinstance(node, str) and "=" in node else set()


def test_the_profile_sets_slurm_options_only_through_resources():
    settings = profile()
    assert settings["executor"] == "slurm"
    # The plugin refuses partition, account, memory, time, CPUs and GPUs in slurm_extra.
    assert "slurm_extra" not in names(settings)
    assert {"slurm_account", "runtime"} <= set(settings["default-resources"])
    for rule in GPU_RULES:
        assert "slurm_partition" in settings["set-resources"][rule]
        # The rules ask for their GPU themselves (gpu=0 when embedding.device is cpu).
        assert "gpu" not in settings["set-resources"][rule]
    assert settings["resources"]["gpu"] >= 1


@pytest.mark.workflow
def test_the_profile_gives_each_embedding_job_a_gpu_and_no_other_job(tmp_path):
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.fail("snakemake-executor-plugin-slurm is not installed (pyproject.toml's test extras need it)")
    # (Without the VirNucPro FASTA files, whose parts a run stopped early would delete as unneeded.)
    config = absolute_config(tmp_path, shard_tokens=4_000, outputs={"virnucpro_fasta": False, "merged_features": False})
    snakemake = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                 str(tmp_path), "--configfile", str(config)]
    # The shards are known once stage 2 has run (a checkpoint per part): run stages 1-2 here, then plan the rest.
    prepared = subprocess.run(snakemake + ["--cores", "2", "--until", "plan_shards", "check_read_ids"],
                              capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr[-5000:]
    shards = sum(plan.read_text().count("\n") - 1 for plan in (tmp_path / "results/demo/shards").glob("*.tsv"))
    assert shards > 1
    # A dry run submits nothing, so the profile's placeholder partition and account do not matter.
    result = subprocess.run(snakemake + ["-n", "--profile", str(PROFILE)], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    counts = {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", output, re.MULTILINE)}
    expected = {"tokenize_nucleotide": shards, "tokenize_protein": shards, "embed_dnabert_s": shards,
                "embed_esm2": shards, "predict_frames": shards, "consensus": 1, "timing_report": 1}
    assert {rule: counts.get(rule) for rule in expected} == expected
    # Each job's resources as the plugin will see them: a GPU for the embedding jobs only.
    jobs = re.findall(r"^(?:local)?rule (\w+):\n.*?^\s+resources: ([^\n]*)", output, re.MULTILINE | re.DOTALL)
    assert len([rule for rule, _ in jobs if rule in GPU_RULES]) == 2 * shards
    for rule, resources in jobs:
        if rule in GPU_RULES:
            partition = profile()["set-resources"][rule]["slurm_partition"]
            assert "gpu=1" in resources.split(", ") and f"slurm_partition={partition}" in resources, resources
        else:
            assert not re.search(r"\bgpu=[1-9]", resources), resources
        if rule != "default":  # the target, no job of work: every job's memory bound is its rule's
            memory = {"embed_dnabert_s": 16000, "embed_esm2": 32000}.get(rule, 4000)
            assert f"mem_mb={memory}" in resources.split(", "), (rule, resources)


def test_the_small_jobs_on_the_way_to_and_from_the_gpu_work_are_not_queued():
    """A cluster job waits in the queue and for the next status check (a dry run does not show
    which jobs are local): the shard plans, the part markers and the reports run where Snakemake runs."""
    block = re.search(r"^localrules:\n((?:    \w+,\n)+)", (REPO / "workflow/Snakefile").read_text(), re.MULTILINE)
    local = set(re.findall(r"\w+", block.group(1)))
    assert {"plan_shards", "part_predicted", "run_summary", "timing_report"} <= local and not local & GPU_RULES


@pytest.mark.slurm
@pytest.mark.workflow
@pytest.mark.skipif(os.environ.get("VIRNUCPRO_SLURM_TEST") != "1",
                    reason="set VIRNUCPRO_SLURM_TEST=1 to run the workflow on a local SLURM (needs root and apt)")
def test_the_workflow_runs_through_a_real_slurm(data_dir):
    env = {**os.environ, "PYTHON": sys.executable, "VIRNUCPRO_SHARED": str(data_dir.parent)}
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-5000:]
    assert "identical" in result.stdout and "passed in" in result.stdout
