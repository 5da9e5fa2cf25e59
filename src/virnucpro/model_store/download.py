"""Fetching the real models into the caches where `virnucpro.model_store.cache` finds them by name.

    python -m virnucpro.model_store.download          # or: snakemake --cores 1 download_models

- ESM-2 3B (`esm2_t36_3B_UR50D`) from fair-esm's server, with the contact-regression weights that
  fair-esm's loader expects beside it, into torch hub's checkpoints folder;
- DNABERT-S (`zhihan1996/DNABERT-S`) from the Hugging Face hub, into the hub cache's layout
  (`blobs/`, `snapshots/<commit>/` linking to them, `refs/main`), as huggingface_hub writes it;
- VirNucPro's `300_model.pth` and `500_model.pth` from the original repository, at a fixed commit,
  into `$VIRNUCPRO_CACHE/VirNucPro`.

Each file is written to `<name>.incomplete` and renamed once complete and checked, so a file under
its final name is always whole. An interrupted transfer resumes from the `.incomplete` file with an
HTTP Range request, in the same run (a few attempts) or the next. A file is checked against its
size (as the source lists it, else as the server sends it) and against the checksum its source
publishes: the SHA-256 or git blob id that the Hugging Face hub lists, and the git blob ids of
VirNucPro's files at the pinned commit (fair-esm publishes none); one that fails is deleted, never
kept. Each model's manifest (`model_cache.manifest_path`) records its files' sizes and SHA-256,
which the outputs made with the model carry.

The servers can be replaced (a mirror, or the tests' local server): `VIRNUCPRO_ESM_URL`,
`HF_ENDPOINT` (huggingface_hub's variable) and `VIRNUCPRO_CLASSIFIER_URL`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from virnucpro.io.atomic import atomic_output
from virnucpro.io.errors import VirnucproError
from virnucpro.model_store.cache import (DNABERT_S_REQUIRED, DNABERT_S_WEIGHTS, MANIFEST_NAME, VIRNUCPRO_CLASSIFIERS,
                                   classifier_cache_path, esm2_cache_path, hf_repo_folder, manifest_path)

ESM2_NAME = "esm2_t36_3B_UR50D"
DNABERT_S_REPO = "zhihan1996/DNABERT-S"
ESM_URL = "https://dl.fbaipublicfiles.com/fair-esm"
HF_ENDPOINT = "https://huggingface.co"
# The original repository at its latest commit; the classifiers are plain git files there, so the
# raw URLs serve them and their git blob ids (`git ls-tree`) check what arrives.
VIRNUCPRO_COMMIT = "0f93f2755a7ea1acd3ff1bcf182892f960ef3326"
CLASSIFIER_URL = f"https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/{VIRNUCPRO_COMMIT}"
CLASSIFIER_BLOBS = {300: "a0b5b85e7c1e44f00cde146d091beb82b2c8e855", 500: "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d"}
ATTEMPTS = 5
TIMEOUT_SECONDS = 60
_CHUNK = 1 << 20
_USER_AGENT = "virnucpro-download/1"


class DownloadError(VirnucproError):
    """A file that could not be fetched, or that arrived different from what its source lists."""


@dataclass(frozen=True)
class RemoteFile:
    name: str  # its name in the model's folder
    url: str
    path: Path  # where it goes
    size: int | None = None  # as the source lists it
    sha256: str | None = None
    git_blob: str | None = None  # git's id of the file: SHA-1 of b"blob <size>\0" + its bytes


def base_urls() -> dict[str, str]:
    """The servers of the three models, from the environment where it names others."""
    return {"esm2": os.environ.get("VIRNUCPRO_ESM_URL", ESM_URL).rstrip("/"),
            "dnabert_s": os.environ.get("HF_ENDPOINT", HF_ENDPOINT).rstrip("/"),
            "classifier": os.environ.get("VIRNUCPRO_CLASSIFIER_URL", CLASSIFIER_URL).rstrip("/")}


def fetch(remote: RemoteFile, progress: bool = True, attempts: int = ATTEMPTS) -> dict:
    """Make `remote.path` a complete, checked copy of `remote.url`; return its size and SHA-256.

    A file already there is checked, not fetched again; a different one is an error (it is the
    user's: remove it to fetch it anew)."""
    path = remote.path
    if path.exists():
        size = remote.size if remote.size is not None else _remote_size(remote.url)
        return _check(remote, path, size, f"{path} is there but")
    partial = path.with_name(f"{path.name}.incomplete")
    path.parent.mkdir(parents=True, exist_ok=True)
    problem = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(2 ** attempt, 30))
        try:
            total = _transfer(remote.url, partial, progress)
        except urllib.error.HTTPError as error:
            if error.code == 416:  # nothing to resume: the partial file is whole, or no prefix of this file
                total = _content_range(error.headers.get("Content-Range"), remote.url)[1]
                if total == partial.stat().st_size:
                    break
                partial.unlink()
                problem = "the server could not resume (HTTP 416)"
                continue
            if error.code >= 500:
                problem = f"HTTP {error.code} {error.reason}"
                continue
            raise DownloadError(f"{remote.url}: HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            problem = f"{type(error).__name__}: {error}"
            continue
        size = partial.stat().st_size
        if total is None or size == total:
            break
        problem = f"the connection ended after {size} of {total} bytes"
    else:
        raise DownloadError(f"{remote.url}: gave up after {attempts} attempts ({problem}); run again to resume "
                            f"from {partial}")
    expected = remote.size if remote.size is not None else total
    try:
        record = _check(remote, partial, expected, "the download")
    except DownloadError:
        partial.unlink()
        raise
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return record


def _transfer(url: str, partial: Path, progress: bool) -> int | None:
    """Append the rest of `url` to `partial` (all of it when the server does not resume); return the
    file's total size as the server gives it."""
    start = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": _USER_AGENT, **({"Range": f"bytes={start}-"} if start else {})}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_SECONDS) as response:
        if start and response.status == 206:
            first, total = _content_range(response.headers.get("Content-Range"), url)
            if first != start:
                raise DownloadError(f"{url}: asked to resume at byte {start}, the server sent from {first}")
        else:
            start = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        meter = Progress(url.rsplit("/", 1)[-1], total, start) if progress else None
        with open(partial, "ab" if start else "wb") as out:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                if meter:
                    meter.advance(len(chunk))
        if meter:
            meter.finish()
    return total


def _content_range(value: str | None, url: str) -> tuple[int | None, int | None]:
    """(first byte, total size) of a `Content-Range: bytes first-last/total` header (`bytes */total`
    in a 416 answer)."""
    try:
        unit, spec = value.split(" ", 1)
        span, total = spec.split("/")
        if unit != "bytes":
            raise ValueError(unit)
        return None if span == "*" else int(span.split("-")[0]), None if total == "*" else int(total)
    except (AttributeError, ValueError):
        raise DownloadError(f"{url}: a partial response with the Content-Range {value!r}") from None


def _remote_size(url: str) -> int | None:
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            length = response.headers.get("Content-Length")
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    return int(length) if length is not None else None


def _check(remote: RemoteFile, path: Path, size: int | None, what: str) -> dict:
    """Size and SHA-256 of `path`, after checking them (and its git blob id) against the source's."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DownloadError(f"{remote.url}: {what} has {actual} bytes, the source has {size}")
    sha256 = hashlib.sha256()
    git_blob = hashlib.sha1(b"blob %d\0" % actual)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            sha256.update(chunk)
            git_blob.update(chunk)
    if remote.sha256 is not None and sha256.hexdigest() != remote.sha256:
        raise DownloadError(f"{remote.url}: {what} has SHA-256 {sha256.hexdigest()}, the source lists "
                            f"{remote.sha256}")
    if remote.git_blob is not None and git_blob.hexdigest() != remote.git_blob:
        raise DownloadError(f"{remote.url}: {what} has git blob id {git_blob.hexdigest()}, the source lists "
                            f"{remote.git_blob}")
    return {"size": actual, "sha256": sha256.hexdigest()}


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, every 10% in a log file."""

    def __init__(self, name: str, total: int | None, done: int = 0):
        self.name, self.total, self.done = name, total, done
        self.started, self.start_done, self.shown = time.monotonic(), done, 0.0
        self.terminal = sys.stderr.isatty()
        self.next_step = 0.1

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.terminal and now - self.shown > 0.2:
            self.shown = now
            sys.stderr.write(f"\r{self._line(now)}")
        elif not self.terminal and self.total and self.done / self.total >= self.next_step:
            self.next_step += 0.1
            sys.stderr.write(self._line(now) + "\n")

    def finish(self) -> None:
        sys.stderr.write(f"{chr(13) if self.terminal else ''}{self._line(time.monotonic())}\n")

    def _line(self, now: float) -> str:
        rate = (self.done - self.start_done) / max(now - self.started, 1e-6) / 2**20
        total = f" of {self.total / 2**20:,.1f} MB ({100 * self.done / self.total:.0f}%)" if self.total else " MB"
        return f"{self.name}: {self.done / 2**20:,.1f}{total}, {rate:,.1f} MB/s"


def write_manifest(model: Path, name: str, files: list[tuple[RemoteFile, dict]], **extra) -> Path:
    """Record a downloaded model's files (name, URL, size, SHA-256) beside it."""
    manifest = {"model": name, "path": str(model), **extra,
                "downloaded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "files": [{"name": remote.name, "url": remote.url, **record} for remote, record in files]}
    path = manifest_path(model)
    with atomic_output(path) as out:
        out.write(json.dumps(manifest, indent=2) + "\n")
    return path


def download_esm2(name: str = ESM2_NAME, base_url: str | None = None, progress: bool = True) -> Path:
    base_url = base_url or base_urls()["esm2"]
    checkpoint = esm2_cache_path(name)
    regression = f"{name}-contact-regression.pt"
    files = [RemoteFile(checkpoint.name, f"{base_url}/models/{checkpoint.name}", checkpoint),
             RemoteFile(regression, f"{base_url}/regression/{regression}", checkpoint.with_name(regression))]
    write_manifest(checkpoint, name, [(remote, fetch(remote, progress)) for remote in files], source=base_url)
    return checkpoint


def download_dnabert_s(repo_id: str = DNABERT_S_REPO, revision: str = "main", endpoint: str | None = None,
                       progress: bool = True) -> Path:
    """The files the DNABERT-S loader needs, at `revision`, into the Hugging Face hub cache."""
    endpoint = endpoint or base_urls()["dnabert_s"]
    info = _read_json(f"{endpoint}/api/models/{repo_id}/revision/{revision}?blobs=true")
    commit = info["sha"]
    listed = {sibling["rfilename"]: sibling for sibling in info.get("siblings", [])}
    weights = next((name for name in DNABERT_S_WEIGHTS if name in listed), None)
    wanted = [*DNABERT_S_REQUIRED, weights]
    if None in wanted or not set(DNABERT_S_REQUIRED) <= set(listed):
        raise DownloadError(f"{endpoint}/{repo_id} at {revision} lists {sorted(listed)}; the DNABERT-S loader needs "
                            f"{' and '.join(DNABERT_S_REQUIRED)} and one of {' or '.join(DNABERT_S_WEIGHTS)}")
    folder = hf_repo_folder(repo_id)
    snapshot = folder / "snapshots" / commit
    fetched = []
    for name in wanted:
        sibling, lfs = listed[name], listed[name].get("lfs")
        blob_id = lfs["sha256"] if lfs else sibling["blobId"]
        remote = RemoteFile(name, f"{endpoint}/{repo_id}/resolve/{commit}/{name}", folder / "blobs" / blob_id,
                            size=lfs["size"] if lfs else sibling.get("size"),
                            sha256=lfs["sha256"] if lfs else None, git_blob=None if lfs else blob_id)
        fetched.append((remote, fetch(remote, progress)))
        link = snapshot / name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)  # a dangling link
            link.symlink_to(os.path.relpath(remote.path, link.parent))
    if revision != commit:
        with atomic_output(folder / "refs" / revision) as ref:
            ref.write(commit)
    write_manifest(snapshot, repo_id, fetched, source=endpoint, revision=commit)
    return snapshot


def download_classifiers(base_url: str | None = None, progress: bool = True) -> list[Path]:
    base_url = base_url or base_urls()["classifier"]
    paths = []
    for length, blob in CLASSIFIER_BLOBS.items():
        path = classifier_cache_path(length)
        remote = RemoteFile(path.name, f"{base_url}/{path.name}", path, git_blob=blob)
        write_manifest(remote.path, f"VirNucPro {length}_model.pth", [(remote, fetch(remote, progress))],
                       source=base_url)
        paths.append(remote.path)
    return paths


DEFAULT_MODELS = {"esm2": ESM2_NAME, "dnabert_s": DNABERT_S_REPO, "classifier": VIRNUCPRO_CLASSIFIERS}


def download_model(kind: str, name: str, progress: bool = True) -> list[Path]:
    """Fetch the model that models.<kind> names; return its file or folder (both classifiers)."""
    if kind == "esm2":
        return [download_esm2(name, progress=progress)]
    if kind == "dnabert_s":
        return [download_dnabert_s(name, progress=progress)]
    if kind == "classifier" and name == VIRNUCPRO_CLASSIFIERS:
        return download_classifiers(progress=progress)
    raise ValueError(f"no download for models.{kind} '{name}'")


def manifest_paths(kind: str, name: str) -> list[Path]:
    """Where `download_model(kind, name)` records the model, known before it runs (Snakemake's outputs)."""
    if kind == "esm2":
        return [manifest_path(esm2_cache_path(name))]
    if kind == "dnabert_s":
        return [hf_repo_folder(name) / MANIFEST_NAME]
    return [manifest_path(classifier_cache_path(length)) for length in CLASSIFIER_BLOBS]


def _read_json(url: str) -> dict:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(DEFAULT_MODELS), default=list(DEFAULT_MODELS),
                        help="fetch only these models")
    args = parser.parse_args(argv)
    found = {kind: download_model(kind, DEFAULT_MODELS[kind]) for kind in args.only}
    print("\nDone. To use them, name them in the config:\n\nmodels:")
    for kind, paths in found.items():
        print(f"  {kind}: {DEFAULT_MODELS[kind]}    # {', '.join(map(str, paths))}")


if __name__ == "__main__":
    main()
