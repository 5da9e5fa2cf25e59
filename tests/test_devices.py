"""GPU leases: never two jobs on one GPU, also across processes; a crashed job frees its GPU; the
user's CUDA_VISIBLE_DEVICES is respected. Real GPUs are not needed: the locks are what is tested."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from virnucpro import devices
from virnucpro.devices import GpuCandidate, gpu_candidates, lease_device

UUIDS = ["GPU-aaaa", "GPU-bbbb", "GPU-cccc", "GPU-dddd"]


def test_candidates_are_all_gpus_without_cuda_visible_devices():
    assert gpu_candidates(None, UUIDS) == [GpuCandidate(str(i), uuid) for i, uuid in enumerate(UUIDS)]


def test_candidates_follow_cuda_visible_devices_in_its_order():
    assert gpu_candidates("3,1", UUIDS) == [GpuCandidate("3", "GPU-dddd"), GpuCandidate("1", "GPU-bbbb")]
    assert gpu_candidates("GPU-cccc", UUIDS) == [GpuCandidate("GPU-cccc", "GPU-cccc")]
    assert gpu_candidates("cccc", UUIDS) == [GpuCandidate("cccc", "GPU-cccc")]
    assert gpu_candidates("2,-1,0", UUIDS) == [GpuCandidate("2", "GPU-cccc")]  # CUDA stops at -1
    assert gpu_candidates("", UUIDS) == []


@pytest.fixture
def environment(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return monkeypatch


def test_cpu_setting_leases_the_cpu(environment, tmp_path):
    environment.setattr(devices, "_nvml_uuids", lambda: UUIDS)
    with lease_device("cpu", tmp_path) as lease:
        assert lease.device == "cpu" and lease.gpu is None


def test_auto_without_a_gpu_driver_runs_on_the_cpu_even_under_a_scheduler(environment, tmp_path):
    environment.setattr(devices, "_nvml_uuids", lambda: None)
    environment.setenv("CUDA_VISIBLE_DEVICES", "0")  # as SLURM sets it for a job with --gpus=1
    with lease_device("auto", tmp_path) as lease:
        assert lease.device == "cpu"


def test_cuda_without_any_gpu_is_an_error(environment, tmp_path):
    environment.setattr(devices, "_nvml_uuids", lambda: None)
    with pytest.raises(RuntimeError, match="no GPU is visible"):
        with lease_device("cuda", tmp_path):
            pass


def test_jobs_in_one_process_get_different_gpus_and_see_only_their_own(environment, tmp_path):
    environment.setattr(devices, "_nvml_uuids", lambda: UUIDS)
    environment.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    with lease_device("auto", tmp_path) as first:
        assert first.device == "cuda:0" and first.uuid == "GPU-bbbb"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
        environment.setenv("CUDA_VISIBLE_DEVICES", "1,2")
        with lease_device("auto", tmp_path) as second:
            assert second.uuid == "GPU-cccc"
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    environment.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    with lease_device("auto", tmp_path) as again:
        assert again.uuid == "GPU-bbbb"  # released at the end of the first job


HOLDER = textwrap.dedent("""
    import os, sys, time
    from virnucpro.devices import lease_device
    with lease_device("cuda", sys.argv[1], poll_seconds=0.1) as lease:
        print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
        time.sleep(float(sys.argv[2]))
""")


def start_job(lock_dir, visible: str, hold_seconds: float) -> subprocess.Popen:
    """A job in its own process (no NVML here: 'cuda' trusts CUDA_VISIBLE_DEVICES)."""
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES=visible)
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), str(hold_seconds)],
                            stdout=subprocess.PIPE, text=True, env=environment)


def test_processes_never_share_a_gpu_and_a_killed_job_frees_its_gpu(tmp_path):
    first = start_job(tmp_path, "0,1", hold_seconds=60)
    second = start_job(tmp_path, "0,1", hold_seconds=60)
    leased = {first.stdout.readline().strip(), second.stdout.readline().strip()}
    assert leased == {"0", "1"}

    waiting = start_job(tmp_path, "0,1", hold_seconds=0)
    time.sleep(1.0)
    assert waiting.poll() is None  # both GPUs are taken: it waits instead of sharing one

    first.send_signal(signal.SIGKILL)  # a crash: the kernel drops its lock
    first.wait()
    got = waiting.stdout.readline().strip()
    assert waiting.wait(timeout=10) == 0
    second.kill()
    second.wait()
    assert got in leased


def test_a_gpu_outside_the_users_cuda_visible_devices_is_never_used(tmp_path):
    job = start_job(tmp_path, "1", hold_seconds=0)
    assert job.stdout.readline().strip() == "1"
    assert job.wait(timeout=10) == 0
