"""Sequences to tokens, for the embedding models: fair-esm's protein alphabet and DNABERT-S's BPE.

Stages 3 and 4 tokenize each shard before the GPU jobs (`virnucpro.stages.sharding`), so this module
stays free of PyTorch: a CPU job that only tokenizes should not pay for importing it. Tokens are
written as 16-bit integers; each tokenizer has an identity that the token files carry, so that an
embedding job refuses tokens made for another model.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from virnucpro.io.tables import string_bytes

# fair-esm's "ESM-1b" alphabet, used by every ESM-2 model: four specials, the residues, padding to a
# multiple of eight, then <mask>.
ALPHABET = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)
CLS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 32

_RESIDUE_TOKEN = np.full(256, UNK, dtype=np.uint16)
for _index, _token in enumerate(ALPHABET):
    if len(_token) == 1:
        _RESIDUE_TOKEN[ord(_token)] = _index


class ProteinTokenizer:
    """ESM-2's tokens: fair-esm's ESM-1b alphabet, the same for every ESM-2 model."""

    identity = "fair-esm ESM-1b alphabet"
    pad_id = PAD

    @staticmethod
    def encode(proteins: pa.Array) -> pa.ListArray:
        """<cls> residues <eos> for each protein, as fair-esm's batch converter encodes them."""
        offsets, data = string_bytes(proteins)
        bounds = offsets + 2 * np.arange(len(offsets))  # each sequence gains <cls> and <eos>
        tokens = np.empty(int(bounds[-1]), dtype=np.uint16)
        residue = np.ones(len(tokens), dtype=bool)
        residue[bounds[:-1]] = residue[bounds[1:] - 1] = False
        tokens[bounds[:-1]], tokens[bounds[1:] - 1] = CLS, EOS
        tokens[residue] = _RESIDUE_TOKEN[data]
        return pa.ListArray.from_arrays(pa.array(bounds, pa.int32()), pa.array(tokens))


class DnaTokenizer:
    """DNABERT-S's BPE tokenizer, read from `tokenizer.json` with the `tokenizers` library."""

    def __init__(self, path: str | os.PathLike):
        from tokenizers import Tokenizer

        if not Path(path).is_file():
            raise ValueError(f"{Path(path).parent}: DNABERT-S model directory has no {Path(path).name}")
        try:
            self._tokenizer = Tokenizer.from_file(os.fspath(path))
        except Exception as error:  # the library raises a bare Exception for a file it cannot parse
            raise ValueError(f"{path}: not a tokenizer file of the tokenizers library ({error})") from None
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        probe = self._tokenizer.encode("ACGT").ids
        cls_id, sep_id = self._tokenizer.token_to_id("[CLS]"), self._tokenizer.token_to_id("[SEP]")
        if cls_id is None or sep_id is None or probe[0] != cls_id or probe[-1] != sep_id:
            raise ValueError(f"{path}: the tokenizer does not wrap sequences in [CLS] ... [SEP]")
        pad_id = self._tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad_id is None else pad_id
        self.vocab_size = self._tokenizer.get_vocab_size()
        if self.vocab_size > 2**16:
            raise ValueError(f"{path}: {self.vocab_size} tokens do not fit the 16-bit token files")
        self.identity = f"tokenizer.json sha256 {hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}"

    def encode(self, sequences: pa.Array) -> pa.ListArray:
        """[CLS] tokens [SEP] of each sequence (the tokenizers library runs on several threads)."""
        ids = [encoding.ids for encoding in self._tokenizer.encode_batch(sequences.to_pylist())]
        bounds = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum([len(i) for i in ids], out=bounds[1:])
        tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint16, count=int(bounds[-1]))
        return pa.ListArray.from_arrays(pa.array(bounds), pa.array(tokens))


def load_tokenizer(kind: str, model_path: str | os.PathLike) -> ProteinTokenizer | DnaTokenizer:
    """The tokenizer of an embedding model: `kind` is "dnabert_s" (its directory) or "esm2"."""
    if kind == "dnabert_s":
        return DnaTokenizer(Path(model_path) / "tokenizer.json")
    if kind == "esm2":
        return ProteinTokenizer()
    raise ValueError(f"unknown embedding model kind '{kind}', expected dnabert_s or esm2")
