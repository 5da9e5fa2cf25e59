"""DNABERT-S against a naive re-implementation of the original architecture (DNABERT-2's MosaicBERT,
as its `bert_layers.py` computes it), run one sequence at a time, unpadded, straight from the
checkpoint's state dict."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer

from conftest import token_lists
from virnucpro.io.sequences import read_sequences
from virnucpro.models.dnabert_s import alibi_slopes, load_dnabert_s
from virnucpro.models.packing import PackedSequences


def standard_alibi_slopes(heads: int) -> list[float]:
    if math.log2(heads).is_integer():
        start = 2 ** (-(2 ** -(math.log2(heads) - 3)))
        return [start ** (i + 1) for i in range(heads)]
    closest = 2 ** math.floor(math.log2(heads))
    return standard_alibi_slopes(closest) + standard_alibi_slopes(2 * closest)[0::2][: heads - closest]


def naive_dnabert_s_feature(state: dict[str, torch.Tensor], config: dict, ids: list[int]) -> torch.Tensor:
    """Mean of the last hidden states over all tokens of one sequence, computed in float64."""
    s = {key.removeprefix("bert."): value.double() for key, value in state.items()}
    hidden, heads, intermediate = config["hidden_size"], config["num_attention_heads"], config["intermediate_size"]
    head_dim = hidden // heads
    eps = config["layer_norm_eps"]
    length = len(ids)

    def layer_norm(x, prefix):
        return F.layer_norm(x, (hidden,), s[prefix + ".weight"], s[prefix + ".bias"], eps)

    distance = (torch.arange(length)[None, :] - torch.arange(length)[:, None]).abs().double()
    slopes = torch.tensor(standard_alibi_slopes(heads), dtype=torch.float64)
    alibi = -slopes[:, None, None] * distance[None]  # [heads, L, L]

    x = s["embeddings.word_embeddings.weight"][torch.tensor(ids)] + s["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, "embeddings.LayerNorm")
    for index in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{index}."
        qkv = x @ s[p + "attention.self.Wqkv.weight"].T + s[p + "attention.self.Wqkv.bias"]
        q, k, v = (t.reshape(length, heads, head_dim).transpose(0, 1) for t in qkv.split(hidden, dim=1))
        scores = q @ k.transpose(1, 2) / math.sqrt(head_dim) + alibi
        context = (torch.softmax(scores, dim=-1) @ v).transpose(0, 1).reshape(length, hidden)
        attention_out = context @ s[p + "attention.output.dense.weight"].T + s[p + "attention.output.dense.bias"]
        x = layer_norm(x + attention_out, p + "attention.output.LayerNorm")
        h = x @ s[p + "mlp.gated_layers.weight"].T
        gated, non_gated = h[:, :intermediate], h[:, intermediate:]
        mlp_out = (F.gelu(gated, approximate="none") * non_gated) @ s[p + "mlp.wo.weight"].T + s[p + "mlp.wo.bias"]
        x = layer_norm(x + mlp_out, p + "mlp.layernorm")
    return x.mean(0)


@pytest.fixture(scope="module")
def dna_sequences(data_dir) -> list[str]:
    genome = next(read_sequences(data_dir / "lambda_virus.fa.gz")).sequence
    pieces = [genome[start : start + length] for start, length in
              [(0, 12), (1000, 97), (5000, 260), (20000, 500), (30011, 41), (47000, 333)]]
    pieces.append(genome[9000:9060] + "NNNN" + genome[9064:9150])  # reads carry N bases
    return pieces


def reference_tokenizer(path) -> Tokenizer:
    """The tokenizers library's tokenizer of a tokenizer.json, without the padding and truncation that
    DNABERT-S's stores (to 2000 tokens): the original's pipeline never applies them to a single
    sequence either (`tokenizer(sequence)` pads and truncates only when asked to)."""
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def load_state(directory) -> dict[str, torch.Tensor]:
    return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)


def embed(model, tokenizer, sequences: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return model.embed(PackedSequences.from_token_lists(token_lists(tokenizer, sequences)))


def copy_model_directory(source, destination, state: dict[str, torch.Tensor], weights: str):
    destination.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(source / name, destination / name)
    if weights == "model.safetensors":
        save_file(state, destination / weights)
    else:
        torch.save(state, destination / weights)
    return destination


def test_alibi_slopes_for_8_heads():
    assert alibi_slopes(8) == pytest.approx([2.0 ** -i for i in range(1, 9)], rel=1e-12)


def test_alibi_slopes_for_12_heads():
    # Eight heads' slopes, then every other slope of sixteen heads (2^-0.5, 2^-1, ...).
    expected = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5]
    assert alibi_slopes(12) == pytest.approx(expected, rel=1e-12)


def test_alibi_slopes_for_6_heads_as_in_the_fixture():
    expected = [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    assert alibi_slopes(6) == pytest.approx(expected, rel=1e-12)
    assert standard_alibi_slopes(6) == pytest.approx(expected, rel=1e-12)


def test_tokenizer_matches_the_tokenizers_library(dnabert_s_dir, dna_sequences):
    _, tokenizer = load_dnabert_s(dnabert_s_dir)
    reference = reference_tokenizer(dnabert_s_dir / "tokenizer.json")
    for sequence, ids in zip(dna_sequences, token_lists(tokenizer, dna_sequences)):
        expected = reference.encode(sequence).ids
        assert ids.tolist() == expected
        assert expected[0] == reference.token_to_id("[CLS]") and expected[-1] == reference.token_to_id("[SEP]")


def test_the_real_tokenizer_neither_pads_nor_truncates(dnabert_s_reference, data_dir):
    """DNABERT-S's tokenizer.json stores padding and truncation at 2000 tokens; they must not apply:
    a sequence keeps all its tokens, and no [PAD] is added."""
    from virnucpro.models.tokens import DnaTokenizer

    stored = json.loads((dnabert_s_reference / "tokenizer.json").read_text())
    assert stored["padding"]["strategy"] == {"Fixed": 2000} and stored["truncation"]["max_length"] == 2000
    genome = next(read_sequences(data_dir / "lambda_virus.fa.gz")).sequence
    short, long = genome[:300], genome[:20_000]
    as_stored = Tokenizer.from_file(str(dnabert_s_reference / "tokenizer.json"))
    assert len(as_stored.encode(short).ids) == len(as_stored.encode(long).ids) == 2000  # what must not happen

    tokenizer = DnaTokenizer(dnabert_s_reference / "tokenizer.json")
    reference = reference_tokenizer(dnabert_s_reference / "tokenizer.json")
    short_ids, long_ids = token_lists(tokenizer, [short, long])
    assert short_ids.tolist() == reference.encode(short).ids and len(short_ids) < 200
    assert long_ids.tolist() == reference.encode(long).ids and len(long_ids) > 2000
    assert tokenizer.pad_id == 3 not in short_ids.tolist()  # the real [PAD]
    assert (short_ids[0], short_ids[-1], long_ids[-1]) == (1, 2, 2)  # [CLS] ... [SEP]


def test_a_model_with_the_real_config_json_loads(dnabert_s_reference, tmp_path):
    """DNABERT-S's config.json (12 layers, width 768, 12 heads, with keys of its own such as
    auto_map) gives the model of the real checkpoint; weights of its shapes load into it."""
    from virnucpro.models.dnabert_s import DnabertS, DnabertSConfig, rename_weight

    config = DnabertSConfig.from_json(dnabert_s_reference / "config.json")
    assert config == DnabertSConfig(vocab_size=4096, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    intermediate_size=3072, layer_norm_eps=1e-12, type_vocab_size=2)
    with torch.device("meta"):
        shapes = DnabertS(config).state_dict()
    generator = torch.Generator().manual_seed(5)
    state = {rename_weight(key, to_checkpoint=True): (0.02 * torch.randn(value.shape, generator=generator))
             .to(torch.bfloat16) for key, value in shapes.items()}
    directory = tmp_path / "DNABERT-S"
    directory.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(dnabert_s_reference / name, directory / name)
    save_file(state, directory / "model.safetensors")
    model, tokenizer = load_dnabert_s(directory, dtype=torch.bfloat16)
    assert model.config.architecture == "dnabert_s_l12_768d_12h" and model.embedding_dim == 768
    features = embed(model, tokenizer, ["ACGTTGCAAGGCTTAACCGGT" * 5, "GATTACA"])
    assert features.shape == (2, 768) and torch.isfinite(features).all()


def test_packed_batch_matches_the_naive_original_architecture(dnabert_s_dir, dna_sequences):
    config = json.loads((dnabert_s_dir / "config.json").read_text())
    assert config["num_attention_heads"] == 6 and config["layer_norm_eps"] == 1e-12
    state = load_state(dnabert_s_dir)
    reference = reference_tokenizer(dnabert_s_dir / "tokenizer.json")
    model, tokenizer = load_dnabert_s(dnabert_s_dir)

    tokens = token_lists(tokenizer, dna_sequences)
    assert len({len(t) for t in tokens}) == len(dna_sequences)  # really different lengths
    packed = PackedSequences.from_token_lists(tokens)
    with torch.no_grad():
        features = model.embed(packed)
    assert features.shape == (len(dna_sequences), config["hidden_size"])
    for row, sequence in enumerate(dna_sequences):
        expected = naive_dnabert_s_feature(state, config, reference.encode(sequence).ids)
        torch.testing.assert_close(features[row], expected.float(), atol=1e-5, rtol=1e-5)


def test_safetensors_bert_prefix_and_pooler_keys_load_identically(dnabert_s_dir, dna_sequences, tmp_path):
    state = load_state(dnabert_s_dir)
    hidden = state["embeddings.word_embeddings.weight"].shape[1]
    pooler = {"pooler.dense.weight": torch.randn(hidden, hidden), "pooler.dense.bias": torch.randn(hidden)}
    prefixed = {"bert." + key: value for key, value in {**state, **pooler}.items()}
    variants = [
        copy_model_directory(dnabert_s_dir, tmp_path / "safetensors", state, "model.safetensors"),
        copy_model_directory(dnabert_s_dir, tmp_path / "pooler", {**state, **pooler}, "pytorch_model.bin"),
        copy_model_directory(dnabert_s_dir, tmp_path / "prefixed", prefixed, "pytorch_model.bin"),
        copy_model_directory(dnabert_s_dir, tmp_path / "prefixed_safetensors", prefixed, "model.safetensors"),
    ]
    model, tokenizer = load_dnabert_s(dnabert_s_dir)
    expected = embed(model, tokenizer, dna_sequences)
    for directory in variants:
        variant_model, variant_tokenizer = load_dnabert_s(directory)
        assert variant_model.fingerprint == model.fingerprint, directory.name
        assert torch.equal(embed(variant_model, variant_tokenizer, dna_sequences), expected), directory.name


def test_save_dnabert_s_writes_model_safetensors(dnabert_s_dir, dna_sequences, tmp_path):
    from virnucpro.models.dnabert_s import save_dnabert_s

    model, tokenizer = load_dnabert_s(dnabert_s_dir)
    save_dnabert_s(model, dnabert_s_dir / "tokenizer.json", tmp_path / "saved", weights="model.safetensors")
    assert (tmp_path / "saved" / "model.safetensors").exists()
    assert not (tmp_path / "saved" / "pytorch_model.bin").exists()
    saved_model, saved_tokenizer = load_dnabert_s(tmp_path / "saved")
    assert torch.equal(embed(saved_model, saved_tokenizer, dna_sequences), embed(model, tokenizer, dna_sequences))


def test_missing_tensor_is_an_error_naming_the_directory(dnabert_s_dir, tmp_path):
    state = load_state(dnabert_s_dir)
    del state["encoder.layer.1.attention.self.Wqkv.bias"]
    directory = copy_model_directory(dnabert_s_dir, tmp_path / "missing", state, "pytorch_model.bin")
    with pytest.raises(ValueError, match="encoder.layer.1.attention.self.Wqkv.bias") as error:
        load_dnabert_s(directory)
    assert str(directory) in str(error.value)


def test_wrongly_shaped_tensor_is_an_error_naming_the_directory(dnabert_s_dir, tmp_path):
    state = load_state(dnabert_s_dir)
    state["encoder.layer.0.mlp.wo.weight"] = state["encoder.layer.0.mlp.wo.weight"][:, :-1].contiguous()
    directory = copy_model_directory(dnabert_s_dir, tmp_path / "misshapen", state, "model.safetensors")
    with pytest.raises(ValueError, match="encoder.layer.0.mlp.wo.weight") as error:
        load_dnabert_s(directory)
    assert str(directory) in str(error.value)


def test_directory_without_weights_is_refused(dnabert_s_dir, tmp_path):
    directory = tmp_path / "no_weights"
    directory.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(dnabert_s_dir / name, directory / name)
    with pytest.raises(ValueError, match="no model.safetensors or pytorch_model.bin"):
        load_dnabert_s(directory)


def test_tokenizer_without_cls_sep_post_processing_is_refused(dnabert_s_dir, tmp_path):
    directory = copy_model_directory(dnabert_s_dir, tmp_path / "no_post_processor", load_state(dnabert_s_dir),
                                     "pytorch_model.bin")
    tokenizer_json = json.loads((directory / "tokenizer.json").read_text())
    tokenizer_json["post_processor"] = None
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    assert Tokenizer.from_file(str(directory / "tokenizer.json")).encode("ACGTACGT").ids[0] != 1
    with pytest.raises(ValueError, match=r"\[CLS\] \.\.\. \[SEP\]"):
        load_dnabert_s(directory)
