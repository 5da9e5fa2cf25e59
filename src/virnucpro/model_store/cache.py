"""Finding the models that `models.*` in the config name: a path, or a name looked up where users
already keep the weights.

- ESM-2, by fair-esm's name (`esm2_t36_3B_UR50D`, or another ESM-2 size): torch hub's checkpoint
  folder, where `esm.pretrained` saves it: `$TORCH_HOME/hub/checkpoints/<name>.pt`, TORCH_HOME
  defaulting to `$XDG_CACHE_HOME/torch`, i.e. `~/.cache/torch`.
- DNABERT-S, by its Hugging Face name (`zhihan1996/DNABERT-S`): the Hugging Face hub cache, where
  `from_pretrained` saves it: `<cache>/models--zhihan1996--DNABERT-S/snapshots/<revision>/`, with
  `refs/main` naming the revision; the cache is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, HF_HOME
  defaulting to `$XDG_CACHE_HOME/huggingface`, i.e. `~/.cache/huggingface`.
- VirNucPro's classifiers (`VirNucPro`): `<expected length>_model.pth` in `$VIRNUCPRO_CACHE/VirNucPro`,
  VIRNUCPRO_CACHE defaulting to `$XDG_CACHE_HOME/virnucpro`, where `virnucpro.model_store.download` puts them.

A name that is not found is an error that lists where it looked. A model fetched by
`virnucpro.model_store.download` has a manifest with each file's size and SHA-256 (`manifest_path`); the
identity of a model that the outputs carry includes them (`model_files`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from virnucpro.io.errors import VirnucproError

ESM2_NAME = re.compile(r"esm2_t\d+_\d+[MB]_UR50D")
HF_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
VIRNUCPRO_CLASSIFIERS = "VirNucPro"
DNABERT_S_REQUIRED = ("config.json", "tokenizer.json")
DNABERT_S_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
MANIFEST_NAME = "virnucpro-manifest.json"
_FETCH_HINT = ("`snakemake --cores 1 download_models` (or `python -m virnucpro.model_store.download`) fetches it there; "
               "where the models are in another cache, point {variables} at it.")


class ModelNotFound(VirnucproError):
    """A models.* setting that is neither an existing path nor a name found in its cache."""


def _cache_home() -> tuple[Path, str]:
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]), "from XDG_CACHE_HOME"
    return Path("~/.cache").expanduser(), "the default ~/.cache"


def torch_hub_dir() -> tuple[Path, str]:
    """torch hub's folder, as `torch.hub.get_dir()` finds it, and what set it."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "hub", "from TORCH_HOME"
    home, source = _cache_home()
    return home / "torch" / "hub", f"TORCH_HOME not set, {source}"


def hf_hub_cache() -> tuple[Path, str]:
    """The Hugging Face hub cache, as huggingface_hub finds it, and what set it."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser(), "from HF_HUB_CACHE"
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub", "from HF_HOME, HF_HUB_CACHE not set"
    home, source = _cache_home()
    return home / "huggingface" / "hub", f"HF_HUB_CACHE and HF_HOME not set, {source}"


def virnucpro_cache() -> tuple[Path, str]:
    """Where `virnucpro.model_store.download` puts VirNucPro's classifiers, and what set it."""
    if os.environ.get("VIRNUCPRO_CACHE"):
        return Path(os.environ["VIRNUCPRO_CACHE"]).expanduser(), "from VIRNUCPRO_CACHE"
    home, source = _cache_home()
    return home / "virnucpro", f"VIRNUCPRO_CACHE not set, {source}"


def esm2_cache_path(name: str) -> Path:
    return torch_hub_dir()[0] / "checkpoints" / f"{name}.pt"


def hf_repo_folder(repo_id: str) -> Path:
    return hf_hub_cache()[0] / f"models--{repo_id.replace('/', '--')}"


def classifier_cache_path(expected_length: int) -> Path:
    return virnucpro_cache()[0] / VIRNUCPRO_CLASSIFIERS / f"{expected_length}_model.pth"


def model_name(kind: str, setting: str) -> str | None:
    """The model name that a models.<kind> setting gives, or None when it is a path (an existing
    path is always one)."""
    if Path(setting).expanduser().exists():
        return None
    named = {"esm2": ESM2_NAME.fullmatch(setting), "dnabert_s": HF_REPO_ID.fullmatch(setting),
             "classifier": setting == VIRNUCPRO_CLASSIFIERS}
    return setting if named.get(kind) else None


def classifier_setting(setting: str, expected_length: int | None) -> str:
    """`models.classifier` with `{expected_length}` replaced, the one field it may hold."""
    others = sorted(set(re.findall(r"\{([^{}]*)\}", setting)) - {"expected_length"})
    if others:
        raise VirnucproError(f"models.classifier '{setting}': {{{others[0]}}} is not filled in; the only field of a "
                             "classifier's path is {expected_length}")
    return setting.replace("{expected_length}", str(expected_length))


def locate_model(kind: str, setting: str, expected_length: int | None = None) -> Path:
    """The file or folder of `models.<kind>` (dnabert_s, esm2 or classifier): `setting` itself when
    it exists, else the model it names in its cache. Raises `ModelNotFound` saying where it looked."""
    if kind == "classifier":
        setting = classifier_setting(setting, expected_length)
    path = Path(setting).expanduser()
    if path.exists():
        return path
    name = model_name(kind, setting)
    if name is None:
        names = {"esm2": "a fair-esm name such as esm2_t36_3B_UR50D", "dnabert_s": "zhihan1996/DNABERT-S",
                 "classifier": VIRNUCPRO_CLASSIFIERS}
        raise ModelNotFound(f"models.{kind} '{setting}': no such file or folder ({path.absolute()}), and not a "
                            f"model name that is looked up in a cache ({names.get(kind, kind)})")
    if kind == "dnabert_s":
        found, where = _hf_snapshot(name)
        variables = "HF_HOME or HF_HUB_CACHE"
    elif kind == "esm2":
        found, where = _cached_file(esm2_cache_path(name), "torch hub's checkpoints", torch_hub_dir()[1])
        variables = "TORCH_HOME"
    else:
        found, where = _cached_file(classifier_cache_path(expected_length), "VirNucPro's classifiers",
                                    virnucpro_cache()[1])
        variables = "VIRNUCPRO_CACHE"
    if found is not None:
        return found
    raise ModelNotFound(f"models.{kind} '{setting}' was not found. Looked for {path.absolute()} (as a path) and for "
                        f"{where}. " + _FETCH_HINT.format(variables=variables))


def _cached_file(path: Path, what: str, source: str) -> tuple[Path | None, str]:
    return (path if path.is_file() else None), f"{path} ({what}; {source})"


def _hf_snapshot(repo_id: str) -> tuple[Path | None, str]:
    """The snapshot of `repo_id` that refs/main names, if it holds what the DNABERT-S loader needs;
    else None and what was looked at."""
    cache, source = hf_hub_cache()
    folder = hf_repo_folder(repo_id)
    ref = folder / "refs" / "main"
    where = f"{ref} (the Hugging Face hub cache {cache}; {source})"
    if not ref.is_file():
        return None, where
    snapshot = folder / "snapshots" / ref.read_text().strip()
    missing = [name for name in DNABERT_S_REQUIRED if not (snapshot / name).is_file()]
    if not any((snapshot / name).is_file() for name in DNABERT_S_WEIGHTS):
        missing.append(" or ".join(DNABERT_S_WEIGHTS))
    if missing:
        return None, f"{snapshot}, which refs/main names but which lacks {', '.join(missing)} ({source})"
    return snapshot, where


def manifest_path(model: str | os.PathLike) -> Path:
    """Where `virnucpro.model_store.download` records a model's files: beside a checkpoint file, and for a
    Hugging Face snapshot in its repository's folder (huggingface_hub keeps only revisions in
    snapshots/)."""
    model = Path(model)
    if model.parent.name == "snapshots":
        return model.parent.parent / MANIFEST_NAME
    return model.with_name(f"{model.name}.manifest.json")


def read_manifest(model: str | os.PathLike) -> dict | None:
    """The manifest of a downloaded model, or None for a model that `virnucpro.model_store.download` did not fetch."""
    path = manifest_path(model)
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if Path(model).parent.name == "snapshots" and manifest.get("revision") != Path(model).name:
        return None  # the manifest of another revision of this Hugging Face model
    return manifest


def model_files(model: str | os.PathLike) -> list[dict] | None:
    """Name, size and SHA-256 of each file of a downloaded model, as its manifest records them (None
    when it has none). A file whose size on disk differs from the record is an error: it changed
    since the download checked it."""
    manifest = read_manifest(model)
    if manifest is None:
        return None
    folder = Path(model) if Path(model).is_dir() else Path(model).parent
    files = []
    for record in manifest["files"]:
        path = folder / record["name"]
        size = path.stat().st_size if path.exists() else None
        if size != record["size"]:
            raise VirnucproError(f"{path}: {size} bytes, but {manifest_path(model)} records {record['size']} from the "
                             "download; fetch it again (`python -m virnucpro.model_store.download`)")
        files.append({"name": record["name"], "size": record["size"], "sha256": record["sha256"]})
    return files


def model_identity(model: str | os.PathLike) -> dict:
    """What outputs record of a model they come from: its path and, when downloaded, its files."""
    files = model_files(model)
    return {"path": os.fspath(model), **({"files": files} if files is not None else {})}
