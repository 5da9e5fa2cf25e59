"""Prepared copies of the embedding models, so that a GPU job loads its model in about a second.

The first GPU job on a machine (or sharing a cache) loads the model from its source, a fair-esm
checkpoint or a DNABERT-S directory, and then writes the weights exactly as it runs them (fused QKV,
bf16 matrices, float32 LayerNorms, this project's names) to a safetensors file in
`$VIRNUCPRO_CACHE/prepared/`, with a manifest. Later jobs read that file in large blocks through
pinned buffers straight into one GPU allocation, on several threads, instead of unpickling the
source and converting it: for ESM-2 3B, 5.6 GB instead of a 5.7 GB fp16 pickle plus conversion.

A prepared copy is used only while it matches its source: the manifest records the source's path
and its identity as the workflow records it (`virnucpro.io.identity`: the size, first and last MiB
and modification time of each of its files), the model's architecture and fingerprint
(computed from the source), the dtype and the size of the weights file; anything that differs makes
the job load the source and prepare the copy again. The weights file is written under a temporary
name and renamed, then the manifest likewise: a preparation that is killed leaves no manifest, or
the old one, which no longer matches, so nothing that looks complete. Temporary files left by a
killed preparation are removed by the next one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import struct
import threading
from pathlib import Path

import torch

from virnucpro.io.identity import identity
from virnucpro.model_store.cache import virnucpro_cache

log = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
_TORCH_DTYPES = {name: dtype for dtype, name in _SAFETENSORS_DTYPES.items()}
_CHUNK_BYTES = 32 << 20
_READ_THREADS = 4


def prepared_root() -> Path:
    """`$VIRNUCPRO_CACHE/prepared` (see virnucpro.model_store.cache), or VIRNUCPRO_PREPARED_DIR if set."""
    if os.environ.get("VIRNUCPRO_PREPARED_DIR"):
        return Path(os.environ["VIRNUCPRO_PREPARED_DIR"]).expanduser()
    return virnucpro_cache()[0] / "prepared"


def prepared_dir(kind: str, path: str | os.PathLike, dtype: torch.dtype) -> Path:
    source = os.path.abspath(path)
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    return prepared_root() / f"{kind}-{Path(source).name}-{str(dtype).removeprefix('torch.')}-{key}"


def _build(kind: str, config: dict) -> torch.nn.Module:
    if kind == "esm2":
        from virnucpro.models.esm2 import ESM2, ESM2Config

        return ESM2(ESM2Config(**config))
    from virnucpro.models.dnabert_s import DnabertS, DnabertSConfig

    return DnabertS(DnabertSConfig(**config))


def load_model(kind: str, path: str | os.PathLike, device: torch.device, dtype: torch.dtype,
               use_prepared: bool = True) -> torch.nn.Module:
    """The model of `kind` at `path` on `device` with `dtype` matrices: from its prepared copy when
    `use_prepared` and a valid one exists; else from the source, and then (with `use_prepared`)
    written as the prepared copy for the next job."""
    if use_prepared:
        try:
            model = load_prepared(kind, path, device, dtype)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            if isinstance(error, torch.OutOfMemoryError):
                raise
            log.warning("prepared copy of %s not usable (%s); loading the source", path, error)
            model = None
        if model is not None:
            return model
    if kind == "esm2":
        from virnucpro.models.esm2 import load_esm2

        model = load_esm2(path, device, dtype)
    else:
        from virnucpro.models.dnabert_s import load_dnabert_s

        model, _ = load_dnabert_s(path, device, dtype)
    if use_prepared:
        try:
            prepare(kind, path, model, dtype)
        except OSError as error:  # a read-only or full cache costs speed, not the job
            log.warning("could not write the prepared copy of %s (%s)", path, error)
    return model


def load_prepared(kind: str, path: str | os.PathLike, device: torch.device,
                  dtype: torch.dtype) -> torch.nn.Module | None:
    """The model from its prepared copy, or None when there is none that matches the source."""
    directory = prepared_dir(kind, path, dtype)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    expected = {"format": FORMAT, "kind": kind, "source": os.path.abspath(path),
                "source_identity": identity(path), "dtype": str(dtype)}
    if any(manifest.get(key) != value for key, value in expected.items()):
        log.info("prepared copy of %s is out of date; preparing it again", path)
        return None
    weights = directory / WEIGHTS
    if not weights.exists() or weights.stat().st_size != manifest["weights_bytes"]:
        return None
    with torch.device("meta"):
        model = _build(kind, manifest["config"])
    tensors = read_safetensors(weights, device, lambda: _warm_up(kind, manifest["config"], device, dtype))
    buffers = {name: tensors.pop(name) for name in manifest["buffers"]}
    model.load_state_dict(tensors, assign=True)
    for name, tensor in buffers.items():
        setattr(model, name, tensor)
    model.fingerprint = manifest["fingerprint"]
    return model.eval()


def _warm_up(kind: str, config: dict, device: torch.device, dtype: torch.dtype) -> None:
    """A one-layer model of the same widths, with random weights, runs a small batch on the GPU, so
    that cuBLAS, FlashAttention and the Triton kernels (from Triton's cache) are loaded by the time
    the real model is; run while its weights are read. A failure here only costs the time."""
    try:
        from virnucpro.models.packing import PackedSequences

        layers = "num_layers" if kind == "esm2" else "num_hidden_layers"
        with torch.device(device):
            model = _build(kind, {**config, layers: 1})
        model.to(dtype)
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.float()
        tokens = torch.randint(4, 20, (64,)).numpy()
        packed = PackedSequences.from_flat(tokens, [20, 30, 14]).to(device)
        with torch.inference_mode():
            model.embed(packed)
        torch.cuda.synchronize(device)
    except Exception as error:  # noqa: BLE001 - a warm-up that fails changes nothing else
        log.info("GPU warm-up failed (%s); the first batch will load what it needs", error)


def prepare(kind: str, path: str | os.PathLike, model: torch.nn.Module, dtype: torch.dtype) -> Path:
    """Write `model`, loaded from `path`, as its prepared copy (see the module's docstring)."""
    directory = prepared_dir(kind, path, dtype)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(directory)
    buffers = {"inv_freq": model.inv_freq} if kind == "esm2" else {"slopes": model.slopes}
    tensors = {**model.state_dict(), **buffers}
    weights = directory / WEIGHTS
    temporary = directory / f".{WEIGHTS}.tmp-{os.getpid()}"
    size = write_safetensors(temporary, tensors)
    os.replace(temporary, weights)
    manifest = {"format": FORMAT, "kind": kind, "source": os.path.abspath(path),
                "source_identity": identity(path), "dtype": str(dtype),
                "architecture": model.config.architecture, "config": dataclasses.asdict(model.config),
                "fingerprint": model.fingerprint, "buffers": sorted(buffers), "weights_bytes": size}
    temporary = directory / f".{MANIFEST}.tmp-{os.getpid()}"
    temporary.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(temporary, directory / MANIFEST)
    log.info("prepared copy of %s written to %s (%.1f GB)", path, directory, size / 1e9)
    return directory


def _remove_stale_temporaries(directory: Path) -> None:
    for temporary in directory.glob(".*.tmp-*"):
        pid = temporary.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)
            if int(pid) != os.getpid():
                continue  # another job is preparing it now
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        temporary.unlink(missing_ok=True)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> int:
    """Write tensors (on any device) in the safetensors format, one at a time, float32 ones first
    so that every tensor starts at a multiple of its element size; fsync'ed. Returns the size."""
    order = sorted(tensors, key=lambda name: (-tensors[name].element_size(), name))
    header, offset = {}, 0
    for name in order:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for name in order:
            tensor = tensors[name].detach().contiguous().to("cpu").reshape(-1)
            out.write(tensor.view(torch.uint8).numpy().data)
        out.flush()
        os.fsync(out.fileno())
    return 8 + len(encoded) + offset


def read_safetensors(path: Path, device: torch.device, while_reading=None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as views of one allocation on `device`. On a GPU the file
    is read in blocks into pinned buffers by several threads, each copying its blocks to the GPU on
    a stream of its own, so that reading the file and copying overlap; meanwhile this thread calls
    `while_reading()`, if given."""
    with open(path, "rb") as source:
        header_bytes = struct.unpack("<Q", source.read(8))[0]
        header = json.loads(source.read(header_bytes))
    header.pop("__metadata__", None)
    start = 8 + header_bytes
    total = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if os.path.getsize(path) != start + total:
        raise ValueError(f"{path}: {os.path.getsize(path)} bytes, the header describes {start + total}")
    data = torch.empty(total, dtype=torch.uint8, device=device)
    if device.type == "cuda":
        _read_to_gpu(path, start, data, while_reading)
    else:
        with open(path, "rb") as source:
            source.seek(start)
            _read_exactly(source.fileno(), memoryview(data.numpy()), start)
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = _TORCH_DTYPES[entry["dtype"]]
        raw = data[begin:end]
        if begin % dtype.itemsize:
            raw = raw.clone()
        tensors[name] = raw.view(dtype).view(entry["shape"])
    return tensors


def _read_exactly(fd: int, view: memoryview, offset: int) -> None:
    while len(view):
        count = os.preadv(fd, [view], offset)
        if count <= 0:
            raise OSError(f"unexpected end of file at byte {offset}")
        view, offset = view[count:], offset + count


def _read_to_gpu(path: Path, start: int, data: torch.Tensor, while_reading=None) -> None:
    total = data.numel()
    blocks = [(offset, min(_CHUNK_BYTES, total - offset)) for offset in range(0, total, _CHUNK_BYTES)]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            torch.cuda.set_device(data.device)
            stream = torch.cuda.Stream(data.device)
            staging = [torch.empty(_CHUNK_BYTES, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
            done: list[torch.cuda.Event | None] = [None, None]
            for count, (offset, size) in enumerate(blocks[index::_READ_THREADS]):
                slot = count % 2
                if done[slot] is not None:
                    done[slot].synchronize()
                _read_exactly(fd, memoryview(staging[slot].numpy())[:size], start + offset)
                with torch.cuda.stream(stream):
                    data[offset : offset + size].copy_(staging[slot][:size], non_blocking=True)
                    done[slot] = torch.cuda.Event()
                    done[slot].record(stream)
            stream.synchronize()
        except BaseException as error:  # re-raised by the caller
            errors.append(error)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(_READ_THREADS)]
    for thread in threads:
        thread.start()
    if while_reading is not None:
        while_reading()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
