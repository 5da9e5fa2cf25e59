"""A failed run's errors where a user looks for them: printed last, once, without a traceback.

An error the project raises on purpose (`VirnucproError`: bad input, config or model) names the
file, record or key and the problem; Snakemake would bury it under tracebacks and its own report
("Error in rule ...: message: None", "WorkflowError"). The Snakefile therefore

- installs `ProjectErrors` on Snakemake's logger, so that an error that stops Snakemake itself
  (the config, the sample sheet, a missing input or model) is printed as its message alone;
- calls `print_failed_jobs_last` when a job failed (`onerror`): the messages that failed jobs
  recorded in their telemetry (`virnucpro.run.telemetry`) are printed when Snakemake has printed
  everything else.

Other errors are bugs of the project and keep their tracebacks.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
from pathlib import Path

from snakemake.exceptions import LockException

from virnucpro.io.errors import VirnucproError
from virnucpro.run.resume import running_owners


def project_error(error: BaseException | None) -> VirnucproError | None:
    """The `VirnucproError` behind an exception that Snakemake may have wrapped (the cause, the
    context or an included exception), if any."""
    seen, pending = set(), [error]
    while pending:
        error = pending.pop(0)
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        if isinstance(error, VirnucproError):
            return error
        seen.add(id(error))
        pending += [error.__cause__, error.__context__, *getattr(error, "_include", [])]
    return None


class ProjectErrors(logging.Filter):
    """Shows an error of the project that Snakemake logs as itself, its message only: Snakemake
    logs the exception it is handling, with the Snakefile line and a traceback. Snakemake's refusal
    to lock a folder that a run still uses names that run instead of advising `--unlock`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and getattr(record, "exception", None):
            handled = sys.exc_info()[1]
            error = project_error(handled)
            if error is not None:
                record.msg, record.args = f"Error: {error}", ()
            elif isinstance(handled, LockException) and (owners := running_owners()):
                runs = "; ".join(f"PID {owner['pid']}, started {owner.get('started', 'at an unknown time')}"
                                 for owner in owners)
                record.msg, record.args = (f"Error: another run of this workflow is using {os.getcwd()} ({runs}): "
                                           "wait for it to end, or stop it; do not use --unlock, which would let "
                                           "both runs write the same files"), ()
        return True


def failed_job_messages(telemetry_dir: str | os.PathLike, run_id: str | None) -> list[str]:
    """The messages of this run's jobs that failed on an error raised on purpose, each once."""
    messages = []
    for path in sorted(Path(telemetry_dir).glob("*/*.json")):
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        message = report.get("message")
        if report.get("run_id") == run_id and report.get("status") == "failed" and message and \
                message not in messages:
            messages.append(message)
    return messages


def print_failed_jobs_last(telemetry_dir: str | os.PathLike, run_id: str | None) -> None:
    """Print the failed jobs' messages when the process exits, after all that Snakemake prints."""
    messages = failed_job_messages(telemetry_dir, run_id)
    if messages:
        atexit.register(lambda: print("".join(f"Error: {message}\n" for message in messages), end="",
                                      file=sys.stderr, flush=True))
