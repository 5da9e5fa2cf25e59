"""ESM-2 against fair-esm, the reference implementation, on small fakes of its checkpoint format."""

from __future__ import annotations

from argparse import Namespace

import numpy as np
import pytest
import torch

from conftest import token_lists
from virnucpro.models import esm2
from virnucpro.models.esm2 import ESM2, ESM2Config, load_esm2, save_fair_esm_checkpoint
from virnucpro.models.packing import PackedSequences
from virnucpro.models.tokens import ProteinTokenizer

esm = pytest.importorskip("esm")

# fair-esm warns that a checkpoint without contact-regression weights cannot predict contacts.
pytestmark = pytest.mark.filterwarnings("ignore:Regression weights not found")

# Different lengths, so that packing, padding and rotary positions all matter; X is a real residue
# of translated frames with ambiguous bases.
PROTEINS = [
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ",
    "MSEQ",
    "GLSDGEWQQVLNVWGKVEADIAGHGQEVLIRLFTGHPETLEKFDKFKHLKTEAEMKASEDLKKHGVTVLTALGAILK",
    "MXXAKLWR",
    "PEPTIDEWITHALLTWENTYAMINQACIDSCDEFGHIKLMNPQRSTVWY",
]


def fair_esm_embeddings(checkpoint_path, proteins: list[str]) -> torch.Tensor:
    """VirNucPro's protein feature computed by fair-esm itself."""
    data = torch.load(checkpoint_path, weights_only=False)
    num_layers = data["cfg"]["model"].encoder_layers
    reference, alphabet = esm.pretrained.load_model_and_alphabet_core("esm2_t4", data, None)
    reference.eval()
    _, _, tokens = alphabet.get_batch_converter()([(str(i), p) for i, p in enumerate(proteins)])
    with torch.no_grad():
        representations = reference(tokens, repr_layers=[num_layers])["representations"][num_layers]
    return torch.stack([representations[i, 1 : len(p) + 1].mean(0) for i, p in enumerate(proteins)])


def our_embeddings(model: ESM2, proteins: list[str]) -> torch.Tensor:
    packed = PackedSequences.from_token_lists(token_lists(ProteinTokenizer, proteins))
    with torch.no_grad():
        return model.embed(packed)


def test_tokenize_matches_fair_esm_batch_converter():
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    protein = "LAGVSERTIDPKQNFYMHWCXBUZO"
    _, _, tokens = alphabet.get_batch_converter()([("p", protein)])
    assert token_lists(ProteinTokenizer, [protein])[0].tolist() == tokens[0].tolist()
    assert list(esm2.ALPHABET) == alphabet.all_toks


def test_fixture_is_fair_esm_format(esm2_checkpoint):
    data = torch.load(esm2_checkpoint, weights_only=False)
    assert isinstance(data["cfg"]["model"], Namespace)
    assert any(key.startswith("encoder.sentence_encoder.layers.") for key in data["model"])


def test_embeddings_match_fair_esm(esm2_checkpoint):
    model = load_esm2(esm2_checkpoint)
    assert model.config == ESM2Config(num_layers=4, embed_dim=64, attention_heads=4, token_dropout=True)
    ours = our_embeddings(model, PROTEINS)
    reference = fair_esm_embeddings(esm2_checkpoint, PROTEINS)
    assert ours.shape == (len(PROTEINS), 64)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_each_sequence_alone_matches_the_packed_batch(esm2_checkpoint):
    model = load_esm2(esm2_checkpoint)
    batch = our_embeddings(model, PROTEINS)
    for row, protein in enumerate(PROTEINS):
        torch.testing.assert_close(our_embeddings(model, [protein])[0], batch[row], atol=1e-5, rtol=1e-5)


def test_fp16_checkpoint_matches_fair_esm(esm2_checkpoint, tmp_path):
    fp16_path = tmp_path / "esm2_t4_64d_fp16.pt"
    save_fair_esm_checkpoint(load_esm2(esm2_checkpoint), fp16_path, dtype=torch.float16)
    data = torch.load(fp16_path, weights_only=False)
    assert data["model"]["encoder.sentence_encoder.layers.0.fc1.weight"].dtype == torch.float16

    model = load_esm2(fp16_path)
    assert model.layers[0].qkv.weight.dtype == torch.float32
    torch.testing.assert_close(our_embeddings(model, PROTEINS), fair_esm_embeddings(fp16_path, PROTEINS),
                               atol=1e-5, rtol=1e-5)


def test_checkpoint_without_cfg_infers_heads_from_a_known_width(tmp_path):
    torch.manual_seed(5)
    model = ESM2(ESM2Config(num_layers=1, embed_dim=320, attention_heads=20))
    with_cfg = tmp_path / "esm2_t1_320d.pt"
    save_fair_esm_checkpoint(model, with_cfg, dtype=torch.float32)
    data = torch.load(with_cfg, weights_only=False)
    del data["cfg"]
    without_cfg = tmp_path / "esm2_t1_320d_nocfg.pt"
    torch.save(data, without_cfg)

    loaded = load_esm2(without_cfg)
    assert loaded.config.attention_heads == 20
    assert loaded.config.embed_dim == 320
    assert loaded.config.num_layers == 1
    # The head count changes the attention, so agreeing with fair-esm (which read the cfg) shows it is right.
    torch.testing.assert_close(our_embeddings(loaded, PROTEINS[:3]), fair_esm_embeddings(with_cfg, PROTEINS[:3]),
                               atol=1e-5, rtol=1e-5)


def test_checkpoint_without_cfg_and_unknown_width_is_refused(esm2_checkpoint, tmp_path):
    data = torch.load(esm2_checkpoint, weights_only=False)
    del data["cfg"]
    path = tmp_path / "esm2_t4_64d_nocfg.pt"
    torch.save(data, path)
    with pytest.raises(ValueError, match="attention heads"):
        load_esm2(path)


def test_not_an_esm2_checkpoint_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="fair-esm"):
        load_esm2(path)


def test_bfloat16_weights_keep_layer_norms_in_float32(esm2_checkpoint):
    model = load_esm2(esm2_checkpoint, dtype=torch.bfloat16)
    assert model.layers[0].qkv.weight.dtype == torch.bfloat16
    assert model.layers[0].self_attn_layer_norm.weight.dtype == torch.float32
    assert model.emb_layer_norm_after.bias.dtype == torch.float32
    reference = our_embeddings(load_esm2(esm2_checkpoint), PROTEINS)
    low_precision = our_embeddings(model, PROTEINS)
    assert low_precision.dtype == torch.float32
    # bf16 has ~3 significant digits; this only checks it computes the same function.
    assert np.corrcoef(low_precision.flatten().numpy(), reference.flatten().numpy())[0, 1] > 0.99
