"""GPU leases: never two jobs on one GPU, also across processes; a crashed job frees its GPU; the
user's CUDA_VISIBLE_DEVICES is respected; lock files cannot be turned against the user; a job that
falls back to the CPU although it seems to have a GPU says so. Real GPUs are not needed: the locks
are what is tested."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from virnucpro.run import devices
from virnucpro.run.devices import GpuCandidate, gpu_candidates, job_gpus, lease_device, lock_directory

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
    # A lease sets CUDA_VISIBLE_DEVICES itself; setting it first makes monkeypatch restore the
    # user's value (or its absence) after the test, so that no lease leaks into later tests.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "unset by the test")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    return monkeypatch


def test_cpu_setting_leases_the_cpu(environment, tmp_path):
    environment.setattr(devices, "_nvml_uuids", lambda: (UUIDS, None))
    with lease_device("cpu", tmp_path) as lease:
        assert lease.device == "cpu" and lease.gpu is None


def test_auto_without_a_gpu_driver_runs_on_the_cpu_even_under_a_scheduler(environment, tmp_path):
    environment.setattr(devices, "_nvml_uuids", lambda: (None, "NVMLError_DriverNotLoaded: Driver Not Loaded"))
    environment.setenv("CUDA_VISIBLE_DEVICES", "0")  # as SLURM sets it for a job with --gpus=1
    with lease_device("auto", tmp_path) as lease:
        assert lease.device == "cpu"
    assert "CUDA_VISIBLE_DEVICES=0" in lease.cpu_fallback and "Driver Not Loaded" in lease.cpu_fallback


def test_falling_back_to_the_cpu_with_a_gpu_in_sight_is_a_loud_warning(environment, tmp_path, caplog):
    environment.setattr(devices, "_nvml_uuids", lambda: (None, "NVMLError_LibraryNotFound"))
    environment.setattr(devices.glob, "glob", lambda pattern: ["/dev/nvidia0", "/dev/nvidiactl"])
    with caplog.at_level("WARNING"), lease_device("auto", tmp_path) as lease:
        assert lease.device == "cpu"
    assert "seems to have a GPU (/dev/nvidia0), but NVML cannot be used (NVMLError_LibraryNotFound)" in caplog.text
    assert lease.cpu_fallback in caplog.text


def test_no_warning_where_there_is_no_gpu_to_see(environment, tmp_path, caplog):
    environment.setattr(devices, "_nvml_uuids", lambda: (None, "NVMLError_LibraryNotFound"))
    environment.setattr(devices.glob, "glob", lambda pattern: [])
    with caplog.at_level("WARNING"), lease_device("auto", tmp_path) as lease:
        assert lease.device == "cpu" and lease.cpu_fallback is None
    assert not caplog.text
    environment.setattr(devices, "_nvml_uuids", lambda: (UUIDS, None))
    assert job_gpus("cpu") == ([], None)


def test_cuda_without_any_gpu_is_an_error(environment, tmp_path):
    environment.setattr(devices, "_nvml_uuids", lambda: (None, "NVMLError_LibraryNotFound"))
    with pytest.raises(RuntimeError, match=r"embedding.device is 'cuda' but no GPU is visible on .* "
                                           r"\(NVML: NVMLError_LibraryNotFound\)"):
        with lease_device("cuda", tmp_path):
            pass


def test_jobs_in_one_process_get_different_gpus_and_see_only_their_own(environment, tmp_path):
    environment.setattr(devices, "_nvml_uuids", lambda: (UUIDS, None))
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
    from virnucpro.run.devices import lease_device
    with lease_device("cuda", sys.argv[1], poll_seconds=0.1) as lease:
        print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
        time.sleep(float(sys.argv[2]))
""")


def start_job(lock_dir, visible: str, hold_seconds: float, python: str = sys.executable, **user) -> subprocess.Popen:
    """A job in its own process (no NVML here: 'cuda' trusts CUDA_VISIBLE_DEVICES)."""
    source = str(Path(devices.__file__).parents[1])
    environment = dict(os.environ, CUDA_VISIBLE_DEVICES=visible, PYTHONPATH=source)
    return subprocess.Popen([python, "-c", HOLDER, str(lock_dir), str(hold_seconds)],
                            stdout=subprocess.PIPE, text=True, env=environment, **user)


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


def test_the_default_lock_directory_is_the_users_own_and_private(environment, tmp_path):
    environment.setattr(devices, "_nvml_uuids", lambda: (UUIDS, None))
    lock_dir = lock_directory(str(tmp_path / "virnucpro-gpu-locks-{uid}"))
    assert lock_dir == str(tmp_path / f"virnucpro-gpu-locks-{os.getuid()}")
    assert lock_directory(devices.DEFAULT_LOCK_DIR) == f"/tmp/virnucpro-gpu-locks-{os.getuid()}"
    with lease_device("auto", lock_dir) as lease:
        assert lease.uuid == "GPU-aaaa"
    assert os.stat(lock_dir).st_mode & 0o777 == 0o700


def test_a_lock_file_is_never_followed_written_or_truncated(environment, tmp_path):
    environment.setattr(devices, "_nvml_uuids", lambda: (UUIDS, None))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    (lock_dir / "GPU-aaaa.lock").symlink_to(victim)  # planted for the first GPU
    with pytest.raises(RuntimeError, match="GPU-aaaa.lock is a symbolic link; refusing it"):
        with lease_device("auto", lock_dir):
            pass
    assert victim.read_text() == "precious\n"
    (lock_dir / "GPU-aaaa.lock").unlink()
    (lock_dir / "GPU-aaaa.lock").write_text("whatever was there\n")
    with lease_device("auto", lock_dir) as lease:
        assert lease.uuid == "GPU-aaaa"
    assert (lock_dir / "GPU-aaaa.lock").read_text() == "whatever was there\n"
    os.mkfifo(lock_dir / "GPU-bbbb.lock")
    environment.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(RuntimeError, match="GPU-bbbb.lock is not a regular file"):  # and does not hang
        with lease_device("auto", lock_dir):
            pass


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "open to others", "another user's"])
def test_a_lock_directory_others_could_subvert_is_refused(environment, tmp_path, kind):
    environment.setattr(devices, "_nvml_uuids", lambda: (UUIDS, None))
    lock_dir = tmp_path / "locks"
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir()
        lock_dir.symlink_to(tmp_path / "elsewhere")
        problem = "is a symbolic link or not a directory"
    elif kind == "dangling symlink":
        lock_dir.symlink_to(tmp_path / "to be made")
        problem = "is a symbolic link or not a directory"
    elif kind == "open to others":
        lock_dir.mkdir()
        lock_dir.chmod(0o777)
        problem = "other users may write to it and it has no sticky bit"
    else:
        lock_dir.mkdir(mode=0o700)
        if os.getuid() == 0:
            os.chown(lock_dir, 65534, 65534)
        else:
            environment.setattr(devices.os, "getuid", lambda: os.stat(lock_dir).st_uid + 1)
        problem = "it belongs to user"
    with pytest.raises(RuntimeError, match=problem):
        with lease_device("auto", lock_dir):
            pass
    assert not (tmp_path / "to be made").exists()


def test_a_shared_sticky_directory_leases_across_users():
    """A directory like /tmp (1777) lets the jobs of two users share a node's GPUs: each opens the
    other's lock file read-only, and the lock still excludes."""
    if os.getuid() != 0:
        pytest.skip("needs root, to run a job as another user")
    source = str(Path(devices.__file__).parents[1])
    for python in (sys.executable, "/usr/bin/python3"):  # devices.py needs only the standard library
        try:
            subprocess.run([python, "-c", "import virnucpro.run.devices"], user=65534, group=65534, check=True,
                           env={"PYTHONPATH": source}, capture_output=True)
            break
        except (OSError, subprocess.CalledProcessError):
            continue
    else:
        pytest.skip("another user cannot run a Python that imports this package")
    with tempfile.TemporaryDirectory() as top:  # pytest's tmp_path is closed to other users
        os.chmod(top, 0o755)
        shared = Path(top) / "shared"
        shared.mkdir()
        shared.chmod(0o1777)
        first = start_job(shared, "0", hold_seconds=60, python=python, user=65534, group=65534)
        assert first.stdout.readline().strip() == "0"
        assert os.stat(shared / "index-0.lock").st_uid == 65534
        second = start_job(shared, "0", hold_seconds=0)  # root, on the other user's lock file
        time.sleep(1.0)
        assert second.poll() is None  # it waits for the GPU instead of sharing it
        first.kill()
        first.wait()
        assert second.stdout.readline().strip() == "0"
        assert second.wait(timeout=10) == 0
