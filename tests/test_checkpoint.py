"""Loading pickled checkpoints must never run code named in the file."""

from __future__ import annotations

import os
import subprocess
from argparse import Namespace

import pytest
import torch

from virnucpro.models.checkpoint import (PickledObject, assign_weights, load_checkpoint, module_state_dict,
                                         weights_fingerprint)


class WritesFileWithOpen:
    def __init__(self, marker):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class WritesFileWithSubprocess:
    def __init__(self, marker):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return subprocess.call, (["touch", self.marker],)


class WritesFileWithOsSystem:
    def __init__(self, marker):
        self.marker = os.fspath(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.mark.parametrize("payload_class", [WritesFileWithOpen, WritesFileWithSubprocess])
def test_pickled_code_is_replaced_by_an_inert_stand_in(tmp_path, payload_class):
    marker = tmp_path / "pwned"
    path = tmp_path / "malicious.pt"
    torch.save({"model": {"weight": torch.arange(4.0)}, "payload": payload_class(marker)}, path)

    loaded = load_checkpoint(path)

    assert not marker.exists()
    assert torch.equal(loaded["model"]["weight"], torch.arange(4.0))
    stand_in = loaded["payload"]
    assert isinstance(stand_in, PickledObject)
    # Pickle may name the function through a compatibility alias (io.open, commands.call).
    assert stand_in.qualified_name.rsplit(".", 1)[-1] in ("open", "call")
    assert os.fspath(marker) in str(stand_in.constructor_args)


def test_os_system_is_refused_without_running_it(tmp_path):
    # torch never unpickles anything from os/posix/sys, even when allow-listed, so such a file
    # cannot be loaded at all; what matters is that the command does not run.
    marker = tmp_path / "pwned"
    path = tmp_path / "malicious.pt"
    torch.save({"model": {"weight": torch.arange(4.0)}, "payload": WritesFileWithOsSystem(marker)}, path)
    with pytest.raises(ValueError, match="malicious.pt: refused, loading it would run code.*posix.system"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload_class", [WritesFileWithOpen, WritesFileWithSubprocess, WritesFileWithOsSystem])
def test_payload_would_run_under_plain_unpickling(tmp_path, payload_class):
    # The control for the tests above: the same file does run its code when unpickled without care.
    marker = tmp_path / "pwned"
    path = tmp_path / "malicious.pt"
    torch.save({"payload": payload_class(marker)}, path)
    loaded = torch.load(path, weights_only=False)
    if hasattr(loaded["payload"], "close"):
        loaded["payload"].close()
    assert marker.exists()


def test_malicious_classifier_file_is_refused_without_running_it(tmp_path):
    from virnucpro.models.classifier import load_classifier

    marker = tmp_path / "pwned"
    path = tmp_path / "500_model.pth"
    torch.save(WritesFileWithOpen(marker), path)
    with pytest.raises(ValueError, match="neither a classifier"):
        load_classifier(path)
    assert not marker.exists()


def test_namespace_is_kept_as_inert_state(tmp_path):
    path = tmp_path / "with_namespace.pt"
    torch.save({"model": {"w": torch.ones(2, 3)}, "cfg": {"model": Namespace(encoder_layers=4, arch="ESM-2")}}, path)
    loaded = load_checkpoint(path)
    cfg = loaded["cfg"]["model"]
    assert isinstance(cfg, PickledObject)
    assert cfg.qualified_name == "argparse.Namespace"
    assert cfg.encoder_layers == 4 and cfg.arch == "ESM-2"
    assert torch.equal(loaded["model"]["w"], torch.ones(2, 3))


def test_pickled_module_gives_its_state_dict(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    path = tmp_path / "module.pt"
    torch.save(module, path)
    state = dict(module_state_dict(load_checkpoint(path)))
    expected = module.state_dict()
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_assign_weights_keeps_layer_norms_float32_and_names_mismatches():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    state = {"0.weight": torch.randn(4, 3), "0.bias": torch.randn(4), "1.weight": torch.randn(4),
             "1.bias": torch.randn(4)}
    assign_weights(model, state, "cpu", torch.bfloat16, "fake.pt")
    assert model[0].weight.dtype == torch.bfloat16
    assert model[1].weight.dtype == torch.float32
    assert torch.equal(model[1].bias, state["1.bias"])

    with torch.device("meta"):
        fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"fake\.pt.*missing \['1\.bias'\]"):
        assign_weights(fresh, {k: v for k, v in state.items() if k != "1.bias"}, "cpu", torch.float32, "fake.pt")
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        assign_weights(fresh, {**state, "extra": torch.zeros(1)}, "cpu", torch.float32, "fake.pt")
    with pytest.raises(ValueError, match=r"wrong shape \['0\.weight'\]"):
        assign_weights(fresh, {**state, "0.weight": torch.zeros(4, 2)}, "cpu", torch.float32, "fake.pt")


def test_weights_fingerprint_identifies_the_values():
    table = torch.randn(10, 8, generator=torch.Generator().manual_seed(1))
    assert weights_fingerprint(table) == weights_fingerprint(table.clone())
    assert weights_fingerprint(table) == weights_fingerprint(table.to(torch.float64))
    changed = table.clone()
    changed[3, 4] += 1e-3
    assert weights_fingerprint(changed) != weights_fingerprint(table)


@pytest.mark.parametrize("kept", [10, 100_000])
def test_a_truncated_checkpoint_is_named_as_truncated(esm2_checkpoint, tmp_path, kept):
    from virnucpro.io.errors import VirnucproError

    truncated = tmp_path / "esm2.pt"
    truncated.write_bytes(esm2_checkpoint.read_bytes()[:kept])
    with pytest.raises(VirnucproError, match=rf"^{truncated}: truncated or corrupt \({kept} bytes\)"):
        load_checkpoint(truncated)
