"""Loading pickled PyTorch checkpoints without running code from them.

fair-esm checkpoints hold an `argparse.Namespace` next to the weights, and VirNucPro's
`300_model.pth` / `500_model.pth` are whole pickled `nn.Module`s whose class lives in the training
script's `__main__`. `torch.load(weights_only=True)` refuses both. Instead of falling back to plain
pickle, which would run whatever the file asks for, every class the file names is replaced by an
inert `PickledObject` that only records the state pickle hands it. The tensors load as usual.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator

import torch

from virnucpro.io.errors import VirnucproError


class PickledObject:
    """Stand-in for a class named in a checkpoint: keeps its pickled state as attributes."""

    def __init__(self, *args, **kwargs):
        self.constructor_args = args

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state

    def __repr__(self) -> str:
        return f"<pickled {type(self).__name__}: {sorted(self.__dict__)}>"


def load_checkpoint(path: str | os.PathLike) -> object:
    """`torch.load` a checkpoint on the CPU, memory-mapped where the format allows it."""
    path = os.fspath(path)
    try:
        stand_ins = [
            (type(name.rsplit(".", 1)[-1], (PickledObject,), {"qualified_name": name}), name)
            for name in torch.serialization.get_unsafe_globals_in_checkpoint(path)
        ]
        with torch.serialization.safe_globals(stand_ins):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                if "mmap" not in str(error):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):
            raise _unreadable(path, error) from None
        # torch refuses some globals (os.system, ...) even as stand-ins; say so plainly instead
        # of passing on its advice to retry with weights_only=False.
        reason = next(line.strip() for line in str(error).splitlines() if "GLOBAL" in line)
        raise VirnucproError(f"{path}: refused, loading it would run code named in the file ({reason})") from None
    except (RuntimeError, ValueError, EOFError) as error:
        # a checkpoint cut short (an interrupted copy) or damaged: torch names neither the file nor the cause
        if isinstance(error, RuntimeError) and "PytorchStreamReader" not in str(error):
            raise
        raise _unreadable(path, error) from None


def _unreadable(path: str, error: Exception) -> VirnucproError:
    problem = str(error).split(". ", 1)[0] or type(error).__name__
    return VirnucproError(f"{path}: truncated or corrupt ({os.path.getsize(path)} bytes): not a complete PyTorch "
                          f"checkpoint ({problem}); copy or download it again")


def module_state_dict(module: PickledObject, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and buffers of a pickled `nn.Module`, named as `state_dict()` would name them."""
    for name, tensor in {**module._parameters, **module._buffers}.items():
        if tensor is not None:
            yield prefix + name, tensor
    for name, child in module._modules.items():
        yield from module_state_dict(child, f"{prefix}{name}.")


def assign_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], device: str | torch.device,
                   dtype: torch.dtype, source: str | os.PathLike, describe=lambda key: key) -> None:
    """Put `state` into `model` (built on the meta device) as `dtype` tensors on `device`.

    LayerNorm parameters stay float32 whatever `dtype` is: normalisation statistics are where low
    precision hurts most. Missing, unexpected or misshapen weights are an error naming them
    (`describe(key)`: the name the checkpoint gives the model's weight `key`).
    """
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    misshapen = sorted(key for key in set(shapes) & set(state) if state[key].shape != shapes[key])
    missing, unexpected, misshapen = ([describe(key) for key in keys] for keys in (missing, unexpected, misshapen))
    if missing or unexpected or misshapen:
        raise VirnucproError(f"{source}: weights do not match the architecture (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {misshapen[:5]})")
    float32_names = {f"{name}.{param}" for name, module in model.named_modules()
                     if isinstance(module, torch.nn.LayerNorm) for param in ("weight", "bias")}
    # Copied as stored, then converted on the device: a GPU converts in a blink what would take the
    # CPU seconds for a 3B model.
    model.load_state_dict({key: value.to(device).to(torch.float32 if key in float32_names else dtype)
                           for key, value in state.items()}, assign=True)


def weights_fingerprint(tensor: torch.Tensor) -> str:
    """Short, stable identity of a model: a hash of its token-embedding table as float32.

    Recorded next to every feature file and classifier, so that features from different embedding
    models are never mixed and a classifier is never applied to features it was not trained on.
    """
    import hashlib

    data = tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]
