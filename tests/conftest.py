"""Shared fixtures: the original tool's reference outputs, real sequences, and small fakes of the
real model formats built through the project's own writers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; VIRNUCPRO_SHARED points elsewhere (e.g. on a GPU machine)
SHARED = Path(os.environ.get("VIRNUCPRO_SHARED", REPO.parent / "shared"))
REFERENCE = SHARED / "reference" / "virnucpro_broad_tests"
# DNABERT-S's own tokenizer.json and config.json, as zhihan1996/DNABERT-S ships them
DNABERT_S_REFERENCE = SHARED / "reference" / "dnabert_s"
DATA = SHARED / "data"
BUILTIN_MODELS = REPO / "resources" / "models"
# Without a GPU the Triton kernels run in Triton's interpreter (tests/test_kernels.py). Triton
# reads this when it is first imported, which another test may do before that one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"{REFERENCE} is not available")
    return REFERENCE


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is not available")
    return DATA


@pytest.fixture(scope="session")
def dnabert_s_reference() -> Path:
    if not DNABERT_S_REFERENCE.is_dir():
        pytest.skip(f"{DNABERT_S_REFERENCE} is not available")
    return DNABERT_S_REFERENCE


@pytest.fixture(scope="session")
def esm2_checkpoint(tmp_path_factory) -> Path:
    """A small ESM-2 (4 layers, width 64, 4 heads) in fair-esm's checkpoint format, float32."""
    from virnucpro.model_store.builtin import perturb_layer_norms
    from virnucpro.models.esm2 import ESM2, ESM2Config, save_fair_esm_checkpoint

    torch.manual_seed(11)
    model = ESM2(ESM2Config(num_layers=4, embed_dim=64, attention_heads=4))
    perturb_layer_norms(model, torch.Generator().manual_seed(12), scale=0.2)
    path = tmp_path_factory.mktemp("esm2") / "esm2_t4_64d.pt"
    save_fair_esm_checkpoint(model, path, dtype=torch.float32)
    return path


@pytest.fixture(scope="session")
def dnabert_s_dir(tmp_path_factory, dnabert_s_reference) -> Path:
    """A small DNABERT-S (2 layers, width 48, 6 heads: not a power of two, which exercises the
    ALiBi slope interleave) as a HuggingFace directory with pytorch_model.bin, like the public one,
    and the public one's tokenizer.json (4096 tokens, the vocabulary of the fake's config)."""
    from virnucpro.model_store.builtin import perturb_layer_norms
    from virnucpro.models.dnabert_s import DnabertS, DnabertSConfig, save_dnabert_s

    torch.manual_seed(21)
    config = DnabertSConfig(vocab_size=4096, hidden_size=48, num_hidden_layers=2, num_attention_heads=6,
                            intermediate_size=96)
    model = DnabertS(config)
    perturb_layer_norms(model, torch.Generator().manual_seed(22), scale=0.2)
    directory = tmp_path_factory.mktemp("dnabert") / "DNABERT-S"
    save_dnabert_s(model, dnabert_s_reference / "tokenizer.json", directory, weights="pytorch_model.bin")
    return directory


class PreparedSample:
    """Stages 1-2 run on an input file as the workflow runs them: partition, chunk and translate
    every part. Attributes hold the parts' paths by kind."""

    def __init__(self, directory: Path, input_path: Path, expected_length: int, parts: int = 1,
                 max_ambiguous_fraction: float = 0.5, read_origins: bool = False):
        from virnucpro.io.ids import unit_names
        from virnucpro.stages.chunking import chunk_part
        from virnucpro.stages.partition import partition_input
        from virnucpro.stages.translation import identify_frames

        self.directory, self.names = directory, unit_names(parts)
        self.input_parts = self._paths("input", "arrow")
        partition_input(input_path, self.input_parts)
        self.reads, self.chunks, self.read_ids = (self._paths(kind, "arrow") for kind in ("reads", "chunks", "read_ids"))
        self.frames, self.chunk_summary = self._paths("frames", "arrow"), self._paths("chunk_summary", "arrow")
        self.chunked_fasta, self.nucleotide_fasta, self.protein_fasta = (
            self._paths(kind, extension) for kind, extension in (("chunked", "fa"), ("identified_nucleotide", "fa"),
                                                                  ("identified_protein", "faa")))
        for index in range(parts):
            chunk_part(self.input_parts[index], expected_length, self.reads[index], self.chunks[index],
                       self.read_ids[index], self.chunked_fasta[index], read_origins)
            identify_frames(self.chunks[index], self.reads[index], self.frames[index], self.chunk_summary[index],
                            max_ambiguous_fraction, (self.nucleotide_fasta[index], self.protein_fasta[index]))

    def _paths(self, kind: str, extension: str) -> list[Path]:
        return [self.directory / kind / f"{name}.{extension}" for name in self.names]

    def text(self, kind: str) -> str:
        """A VirNucPro FASTA file as the workflow assembles it from the parts."""
        return "".join(path.read_text() for path in getattr(self, kind))


@pytest.fixture
def prepare(tmp_path):
    """`prepare(input_path, expected_length, parts=1)`: stages 1-2 in a fresh directory
    (`read_origins=True` as for a training input)."""
    count = iter(range(1000))

    def run(input_path, expected_length: int, parts: int = 1, max_ambiguous_fraction: float = 0.5,
            read_origins: bool = False) -> PreparedSample:
        return PreparedSample(tmp_path / f"prepared{next(count)}", input_path, expected_length, parts,
                              max_ambiguous_fraction, read_origins)

    return run


def token_lists(tokenizer, sequences: list[str]) -> list:
    """A tokenizer's tokens (see virnucpro.models.tokens) as one int64 array per sequence."""
    import numpy as np
    import pyarrow as pa

    encoded = tokenizer.encode(pa.array(sequences, pa.string()))
    return [np.asarray(tokens, dtype=np.int64) for tokens in encoded.to_pylist()]


# The workflow on small inputs, as tests/test_workflow.py and test_resume.py run it.
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
EDGE_CASES = {
    "empty_read": "",
    "two_bases": "AC",
    "one_codon": "ATG",  # scored by the classifier, but too short for a call
    "all_n": "N" * 200,
    "stop_in_every_frame": "TTAA" * 50,  # its own reverse complement, TAA in every frame
    "protein_in_iupac_letters": "MKKSWRDVHACGTTRKSDYVMHW",  # valid IUPAC, but a protein: warned about
    "lowercase_multiline": None,  # filled from a real read below
}
# A header as public FASTA files have them: free text with "origin=", and not UTF-8 (Latin-1).
FREE_TEXT_HEADER = "lowercase_multiline edge case, origin=environmental, collected in Bogotá".encode("latin-1")


def write_input(path: Path, data_dir: Path, reads: int = 40) -> list[str]:
    """Real lambda reads from the shared FASTQ, plus reads that cannot be classified."""
    from virnucpro.io.sequences import read_sequences

    records = []
    for record in read_sequences(data_dir / "reads_1.fq.gz"):
        records.append((record.id, record.sequence))
        if len(records) == reads:
            break
    lowercase = records[0][1].lower() * 3
    with open(path, "wb") as out:
        for read_id, sequence in records:
            out.write(f">{read_id}\n{sequence}\n".encode())
        for read_id, sequence in EDGE_CASES.items():
            sequence = lowercase if sequence is None else sequence
            out.write(b">" + FREE_TEXT_HEADER + b"\n" if sequence is lowercase else f">{read_id} edge case\n".encode())
            out.write("".join(sequence[i : i + 70] + "\n" for i in range(0, len(sequence), 70)).encode())
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


@pytest.fixture(scope="session")
def one_shard_run(tmp_path_factory, data_dir):
    """The reference run: the whole workflow on `write_input`'s reads, one part and one shard. Shared
    by the workflow tests (tests/test_workflow.py, test_resume.py), which only read its results/ (a
    test that runs it again works on a copy)."""
    workdir = tmp_path_factory.mktemp("run1")
    read_ids = write_input(workdir / "reads.fa", data_dir)
    run_workflow(workdir, write_config(workdir, workdir / "reads.fa"), "--resources", "gpu=1")
    return workdir, read_ids
