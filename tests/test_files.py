"""Outputs appear whole and together or not at all, and what a killed job leaves is cleaned when
its outputs are next written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from virnucpro.io.atomic import atomic_output, atomic_path, atomic_paths, scratch_directory

KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from virnucpro.io.atomic import atomic_path, scratch_directory
    with scratch_directory(sys.argv[1]) as scratch, atomic_path(sys.argv[1]) as temporary:
        (scratch / "run0.arrow").write_bytes(b"x" * 1000)
        temporary.write_bytes(b"half of it")
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_outputs_written_together_appear_together(tmp_path):
    paths = [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.parquet"]
    with atomic_paths(paths) as temporaries:
        for temporary in temporaries:
            temporary.write_text(temporary.name)
        assert not any(path.exists() for path in paths)
    assert [path.read_text() for path in paths] == [f".{path.name}.tmp-{os.getpid()}" for path in paths]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "c.parquet"]


def test_a_failure_after_some_outputs_leaves_none_of_them(tmp_path):
    paths = [tmp_path / "a.txt", tmp_path / "b.txt"]
    paths[1].write_text("from the last run")
    with pytest.raises(RuntimeError):
        with atomic_paths(paths) as temporaries:
            temporaries[0].write_text("complete")
            raise RuntimeError("killed while writing the second")
    assert not paths[0].exists() and paths[1].read_text() == "from the last run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]


def test_what_a_killed_writer_leaves_is_removed_when_the_output_is_next_written(tmp_path):
    output = tmp_path / "features" / "000.arrow"
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    killed = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(output)], env=environment)
    assert killed.wait() == -signal.SIGKILL
    left = sorted(p.name for p in output.parent.iterdir())
    assert left == [f".000.arrow.scratch-{killed.pid}", f".000.arrow.tmp-{killed.pid}"]
    (output.parent / ".000.arrow.tmp-12x").write_text("not ours: not a pid")
    (output.parent / ".0000.arrow.tmp-1").write_text("another output's")
    with scratch_directory(output), atomic_output(output) as out:
        out.write("the rerun")
    assert output.read_text() == "the rerun"
    assert sorted(p.name for p in output.parent.iterdir()) == sorted([".0000.arrow.tmp-1", ".000.arrow.tmp-12x",
                                                                      "000.arrow"])


def test_atomic_path_is_atomic_paths_of_one(tmp_path):
    with atomic_path(tmp_path / "x") as temporary:
        temporary.write_text("x")
    assert (tmp_path / "x").read_text() == "x"
