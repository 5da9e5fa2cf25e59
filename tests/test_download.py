"""Fetching the real models (virnucpro.model_store.download) from a server on the loopback interface that serves
small fakes in the real formats, and finding them in the caches by name (virnucpro.model_store.cache)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from virnucpro.model_store import download
from virnucpro.model_store.cache import (ModelNotFound, locate_model, manifest_path, model_files, model_identity,
                                   model_name)
from virnucpro.model_store.download import DownloadError, RemoteFile, fetch

COMMIT = "5c1a2f9e0b7d4c3a8e6f1d2b9a0c7e4f3b2a1d0c"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class ModelServer:
    """An HTTP server on 127.0.0.1 with Range support. `files` maps URL paths to bytes, `pages` to
    JSON; `cut[path] = n` ends the next response for that path after n bytes (an interrupted
    transfer), `cut_every = n` every response; `serve_ranges = False` makes it answer every request
    with the whole file."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.pages: dict[str, dict] = {}
        self.cut: dict[str, int] = {}
        self.cut_every: int | None = None
        self.serve_ranges = True
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Range header
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(send_body=False)

            def do_GET(self):
                self.answer(send_body=True)

            def answer(self, send_body: bool):
                server.requests.append((self.command, self.path, self.headers.get("Range")))
                if self.path in server.pages:
                    body = json.dumps(server.pages[self.path]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                first = 0
                requested = self.headers.get("Range")
                if requested and server.serve_ranges:
                    first = int(requested.removeprefix("bytes=").split("-")[0])
                    if first >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {first}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - first))
                self.end_headers()
                if send_body:
                    body = data[first:]
                    if self.path in server.cut:
                        body = body[: server.cut.pop(self.path)]
                    elif server.cut_every is not None:
                        body = body[: server.cut_every]
                    self.wfile.write(body)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the GET requests for `path`."""
        return [requested for method, got, requested in self.requests if method == "GET" and got == path]


@pytest.fixture
def server():
    server = ModelServer()
    server.thread.start()
    yield server
    server.http.shutdown()
    server.http.server_close()


@pytest.fixture
def caches(tmp_path, monkeypatch, server):
    """Empty caches for the three models, and the server as the source of each."""
    roots = {name: tmp_path / name for name in ("torch", "huggingface", "virnucpro")}
    for variable in ("HF_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(roots["torch"]))
    monkeypatch.setenv("HF_HOME", str(roots["huggingface"]))
    monkeypatch.setenv("VIRNUCPRO_CACHE", str(roots["virnucpro"]))
    monkeypatch.setenv("VIRNUCPRO_ESM_URL", f"{server.url}/fair-esm")
    monkeypatch.setenv("HF_ENDPOINT", f"{server.url}/hf")
    monkeypatch.setenv("VIRNUCPRO_CLASSIFIER_URL", f"{server.url}/virnucpro")
    return roots


def serve_esm2(server: ModelServer, checkpoint: Path, tmp_path: Path) -> dict[str, bytes]:
    """The fake ESM-2 as esm2_t36_3B_UR50D, with contact-regression weights for its 4 x 4 heads."""
    regression = tmp_path / "regression.pt"
    torch.save({"model": {"contact_head.regression.weight": torch.randn(1, 16),
                          "contact_head.regression.bias": torch.randn(1)}}, regression)
    files = {"esm2_t36_3B_UR50D.pt": checkpoint.read_bytes(),
             "esm2_t36_3B_UR50D-contact-regression.pt": regression.read_bytes()}
    server.files["/fair-esm/models/esm2_t36_3B_UR50D.pt"] = files["esm2_t36_3B_UR50D.pt"]
    server.files["/fair-esm/regression/esm2_t36_3B_UR50D-contact-regression.pt"] = \
        files["esm2_t36_3B_UR50D-contact-regression.pt"]
    return files


def serve_dnabert_s(server: ModelServer, directory: Path, repo: str = "zhihan1996/DNABERT-S",
                    weights: str = "pytorch_model.bin") -> dict[str, bytes]:
    """A DNABERT-S folder as the Hugging Face hub serves it: the repository's listing (with each
    file's size and git blob id, and for the LFS weights their SHA-256) and its files."""
    files = {name: (directory / name).read_bytes() for name in ("config.json", "tokenizer.json", weights)}
    siblings = [{"rfilename": "README.md", "size": 5, "blobId": git_blob_id(b"hello")}]
    for name, data in files.items():
        sibling = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
        if name == weights:
            sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        siblings.append(sibling)
        server.files[f"/hf/{repo}/resolve/{COMMIT}/{name}"] = data
    server.pages[f"/hf/api/models/{repo}/revision/main?blobs=true"] = {"id": repo, "sha": COMMIT, "siblings": siblings}
    return files


def serve_classifiers(server: ModelServer, tmp_path: Path, monkeypatch) -> dict[str, bytes]:
    """Fakes of VirNucPro's 300_model.pth and 500_model.pth (pickled modules, as the originals),
    with their git blob ids in place of the real files'."""
    from test_classifier import make_original_model, save_as_original

    files = {}
    for seed, length in enumerate((300, 500)):
        path = tmp_path / f"{length}_model.pth"
        save_as_original(make_original_model(seed), path)
        files[path.name] = path.read_bytes()
        server.files[f"/virnucpro/{path.name}"] = files[path.name]
    monkeypatch.setattr(download, "CLASSIFIER_BLOBS", {300: git_blob_id(files["300_model.pth"]),
                                                       500: git_blob_id(files["500_model.pth"])})
    return files


def test_a_fresh_machine_gets_every_model_and_finds_it_by_name(caches, server, esm2_checkpoint, dnabert_s_dir,
                                                                tmp_path, monkeypatch):
    from virnucpro.model_store.loading import load_embedder
    from virnucpro.models.classifier import load_classifier

    served = {**serve_esm2(server, esm2_checkpoint, tmp_path), **serve_dnabert_s(server, dnabert_s_dir),
              **serve_classifiers(server, tmp_path, monkeypatch)}
    download.main([])

    checkpoint = locate_model("esm2", "esm2_t36_3B_UR50D")
    assert checkpoint == caches["torch"] / "hub" / "checkpoints" / "esm2_t36_3B_UR50D.pt"
    # where fair-esm's loader looks for the regression weights: beside the checkpoint
    assert Path(f"{checkpoint.with_suffix('')}-contact-regression.pt").read_bytes() == \
        served["esm2_t36_3B_UR50D-contact-regression.pt"]

    snapshot = locate_model("dnabert_s", "zhihan1996/DNABERT-S")
    repo = caches["huggingface"] / "hub" / "models--zhihan1996--DNABERT-S"
    assert snapshot == repo / "snapshots" / COMMIT
    assert (repo / "refs" / "main").read_text() == COMMIT
    weights = served["pytorch_model.bin"]
    assert (snapshot / "pytorch_model.bin").resolve() == repo / "blobs" / hashlib.sha256(weights).hexdigest()
    assert (snapshot / "config.json").resolve() == repo / "blobs" / git_blob_id(served["config.json"])
    assert not (snapshot / "README.md").exists()

    for length in (300, 500):
        classifier = locate_model("classifier", "VirNucPro", length)
        assert classifier == caches["virnucpro"] / "VirNucPro" / f"{length}_model.pth"
        assert load_classifier(classifier)[1].expected_length == length

    for model in (checkpoint, snapshot):
        for record in model_files(model):
            assert record["size"] == len(served[record["name"]])
            assert record["sha256"] == hashlib.sha256(served[record["name"]]).hexdigest()
    assert {r["name"] for r in model_files(checkpoint)} == {"esm2_t36_3B_UR50D.pt",
                                                           "esm2_t36_3B_UR50D-contact-regression.pt"}
    assert model_identity(classifier)["files"][0]["sha256"] == hashlib.sha256(served["500_model.pth"]).hexdigest()
    # the identity of the loaded models, which their feature files carry, includes the records
    cpu = torch.device("cpu")
    assert load_embedder("esm2", checkpoint, cpu).identity()["files"] == model_files(checkpoint)
    assert load_embedder("dnabert_s", snapshot, cpu).identity()["files"] == model_files(snapshot)

    # a second run checks what is there and fetches no file again
    def file_gets():
        return [request for request in server.requests if request[0] == "GET" and "/api/" not in request[1]]

    before = file_gets()
    download.main([])
    assert file_gets() == before


def test_an_interrupted_transfer_resumes_where_it_stopped(caches, server, esm2_checkpoint, tmp_path):
    served = serve_esm2(server, esm2_checkpoint, tmp_path)
    url_path = "/fair-esm/models/esm2_t36_3B_UR50D.pt"
    server.cut[url_path] = 10_000  # the connection ends after 10 kB
    checkpoint = download.download_esm2(progress=False)
    assert checkpoint.read_bytes() == served["esm2_t36_3B_UR50D.pt"]
    assert server.gets(url_path) == [None, "bytes=10000-"]
    assert not list(checkpoint.parent.glob("*.incomplete"))


def test_a_transfer_killed_in_an_earlier_run_resumes_from_its_incomplete_file(caches, server, dnabert_s_dir):
    served = serve_dnabert_s(server, dnabert_s_dir)
    blob = (caches["huggingface"] / "hub" / "models--zhihan1996--DNABERT-S" / "blobs" /
            hashlib.sha256(served["pytorch_model.bin"]).hexdigest())
    blob.parent.mkdir(parents=True)
    half = len(served["pytorch_model.bin"]) // 2
    blob.with_name(blob.name + ".incomplete").write_bytes(served["pytorch_model.bin"][:half])
    snapshot = download.download_dnabert_s(progress=False)
    assert (snapshot / "pytorch_model.bin").read_bytes() == served["pytorch_model.bin"]
    assert server.gets(f"/hf/zhihan1996/DNABERT-S/resolve/{COMMIT}/pytorch_model.bin") == [f"bytes={half}-"]


def test_a_whole_incomplete_file_left_by_a_killed_run_is_not_fetched_again(caches, server, tmp_path):
    data = os.urandom(20_000)
    server.files["/f.bin"] = data
    target = tmp_path / "f.bin"
    target.with_name("f.bin.incomplete").write_bytes(data)  # killed after the transfer, before the rename
    record = fetch(RemoteFile("f.bin", f"{server.url}/f.bin", target, git_blob=git_blob_id(data)), progress=False)
    assert target.read_bytes() == data and record == {"size": 20_000, "sha256": hashlib.sha256(data).hexdigest()}
    assert server.gets("/f.bin") == ["bytes=20000-"]  # answered 416 with the size: nothing left to fetch


def test_a_server_that_does_not_resume_sends_the_whole_file_again(caches, server, tmp_path):
    data = os.urandom(50_000)
    server.files["/f.bin"] = data
    server.serve_ranges = False
    target = tmp_path / "f.bin"
    target.with_name("f.bin.incomplete").write_bytes(data[:1000])
    fetch(RemoteFile("f.bin", f"{server.url}/f.bin", target, sha256=hashlib.sha256(data).hexdigest()), progress=False)
    assert target.read_bytes() == data


def test_a_corrupted_classifier_is_refused_and_nothing_is_kept(caches, server, tmp_path, monkeypatch):
    served = serve_classifiers(server, tmp_path, monkeypatch)
    corrupted = bytearray(served["300_model.pth"])
    corrupted[len(corrupted) // 2] ^= 0xFF
    server.files["/virnucpro/300_model.pth"] = bytes(corrupted)
    with pytest.raises(DownloadError, match=r"300_model.pth: the download has git blob id [0-9a-f]{40}, the source "
                                            r"lists [0-9a-f]{40}"):
        download.download_classifiers(progress=False)
    folder = caches["virnucpro"] / "VirNucPro"
    assert not list(folder.iterdir())  # no file under its name, no partial one, no manifest
    with pytest.raises(ModelNotFound):
        locate_model("classifier", "VirNucPro", 300)


def test_truncated_or_corrupted_weights_are_refused(caches, server, dnabert_s_dir):
    served = serve_dnabert_s(server, dnabert_s_dir)
    url_path = f"/hf/zhihan1996/DNABERT-S/resolve/{COMMIT}/pytorch_model.bin"
    server.files[url_path] = served["pytorch_model.bin"][:-100]  # served whole, but shorter than the hub lists
    with pytest.raises(DownloadError, match=rf"the download has {len(served['pytorch_model.bin']) - 100} bytes, "
                                            rf"the source has {len(served['pytorch_model.bin'])}"):
        download.download_dnabert_s(progress=False)
    corrupted = bytearray(served["pytorch_model.bin"])
    corrupted[5] ^= 1
    server.files[url_path] = bytes(corrupted)
    with pytest.raises(DownloadError, match="the download has SHA-256 [0-9a-f]{64}, the source lists"):
        download.download_dnabert_s(progress=False)
    repo = caches["huggingface"] / "hub" / "models--zhihan1996--DNABERT-S"
    assert not list((repo / "blobs").glob("*.incomplete"))
    assert not (repo / "refs").exists()  # the revision is not named until all its files are there
    with pytest.raises(ModelNotFound):
        locate_model("dnabert_s", "zhihan1996/DNABERT-S")


def test_a_file_already_in_the_cache_that_differs_is_left_alone_and_named(caches, server, esm2_checkpoint, tmp_path):
    serve_esm2(server, esm2_checkpoint, tmp_path)
    checkpoint = caches["torch"] / "hub" / "checkpoints" / "esm2_t36_3B_UR50D.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"something else")
    with pytest.raises(DownloadError, match="esm2_t36_3B_UR50D.pt is there but has 14 bytes, the source has"):
        download.download_esm2(progress=False)
    assert checkpoint.read_bytes() == b"something else"


def test_a_transfer_that_keeps_failing_gives_up_and_keeps_what_it_has(caches, server, tmp_path, monkeypatch):
    monkeypatch.setattr(download.time, "sleep", lambda seconds: None)
    data = os.urandom(10_000)
    server.files["/f.bin"] = data
    server.cut_every = 100
    target = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match=r"gave up after 3 attempts \(the connection ended after 300 of 10000 "
                                            r"bytes\); run again to resume"):
        fetch(RemoteFile("f.bin", f"{server.url}/f.bin", target), progress=False, attempts=3)
    assert target.with_name("f.bin.incomplete").read_bytes() == data[:300]
    assert not target.exists()


def test_a_missing_file_on_the_server_is_named(caches, server, tmp_path):
    with pytest.raises(DownloadError, match=r"/nothing.bin: HTTP 404"):
        fetch(RemoteFile("nothing.bin", f"{server.url}/nothing.bin", tmp_path / "x"), progress=False)


# Finding models by name in the caches.

def test_names_are_looked_up_where_torch_hub_and_hugging_face_keep_models(tmp_path, monkeypatch, dnabert_s_dir):
    for variable in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "VIRNUCPRO_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    checkpoint = tmp_path / "xdg" / "torch" / "hub" / "checkpoints" / "esm2_t33_650M_UR50D.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"x")
    assert locate_model("esm2", "esm2_t33_650M_UR50D") == checkpoint

    def hf_cache(root: Path) -> Path:
        repo = root / "models--zhihan1996--DNABERT-S"
        snapshot = repo / "snapshots" / COMMIT
        snapshot.mkdir(parents=True)
        for name in ("config.json", "tokenizer.json", "pytorch_model.bin"):
            (snapshot / name).symlink_to(dnabert_s_dir / name)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(COMMIT)
        return snapshot

    default = hf_cache(tmp_path / "xdg" / "huggingface" / "hub")
    assert locate_model("dnabert_s", "zhihan1996/DNABERT-S") == default
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    home = hf_cache(tmp_path / "hf_home" / "hub")
    assert locate_model("dnabert_s", "zhihan1996/DNABERT-S") == home
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub_cache"))  # before HF_HOME, as in huggingface_hub
    hub_cache = hf_cache(tmp_path / "hub_cache")
    assert locate_model("dnabert_s", "zhihan1996/DNABERT-S") == hub_cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(ModelNotFound, match="torch_home/hub/checkpoints/esm2_t33_650M_UR50D.pt"):
        locate_model("esm2", "esm2_t33_650M_UR50D")


def test_a_name_not_found_lists_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(ModelNotFound) as error:
        locate_model("esm2", "esm2_t36_3B_UR50D")
    assert str(error.value).startswith(
        f"models.esm2 'esm2_t36_3B_UR50D' was not found. Looked for {tmp_path}/esm2_t36_3B_UR50D (as a path) and "
        f"for {tmp_path}/th/hub/checkpoints/esm2_t36_3B_UR50D.pt (torch hub's checkpoints; from TORCH_HOME).")
    assert "download_models" in str(error.value) and "point TORCH_HOME at it" in str(error.value)
    with pytest.raises(ModelNotFound, match=rf"{tmp_path}/hf/hub/models--zhihan1996--DNABERT-S/refs/main \(the "
                                            rf"Hugging Face hub cache {tmp_path}/hf/hub; from HF_HOME"):
        locate_model("dnabert_s", "zhihan1996/DNABERT-S")
    snapshot = tmp_path / "hf" / "hub" / "models--zhihan1996--DNABERT-S" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(COMMIT)
    with pytest.raises(ModelNotFound, match="which refs/main names but which lacks tokenizer.json, "
                                            "model.safetensors or pytorch_model.bin"):
        locate_model("dnabert_s", "zhihan1996/DNABERT-S")
    with pytest.raises(ModelNotFound, match=r"models.esm2 'esm2.pt': no such file or folder .* and not a model name"):
        locate_model("esm2", "esm2.pt")


def test_an_existing_path_is_a_path_whatever_it_looks_like(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zhihan1996" / "DNABERT-S").mkdir(parents=True)
    assert model_name("dnabert_s", "zhihan1996/DNABERT-S") is None
    assert locate_model("dnabert_s", "zhihan1996/DNABERT-S") == Path("zhihan1996/DNABERT-S")
    assert model_name("esm2", "esm2_t36_3B_UR50D") == "esm2_t36_3B_UR50D"
    assert model_name("classifier", "VirNucPro") == "VirNucPro"
    assert model_name("classifier", "models/{expected_length}_model.pth") is None
    (tmp_path / "500_model.pth").write_bytes(b"x")
    assert locate_model("classifier", "{expected_length}_model.pth", 500) == Path("500_model.pth")


def test_a_downloaded_file_that_changed_size_is_an_error(caches, server, tmp_path, monkeypatch):
    serve_classifiers(server, tmp_path, monkeypatch)
    path = download.download_classifiers(progress=False)[0]
    assert manifest_path(path) == path.with_name("300_model.pth.manifest.json")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"300_model.pth: \d+ bytes, but .*300_model.pth.manifest.json records"):
        model_files(path)
