"""The built-in default models, small enough to ship in `resources/models` (a few MB in all).

They have the real architectures and on-disk formats, so the default run goes through the same
loaders as real weights, but they are tiny and the embedding models' weights are seeded random
numbers: features from them carry sequence composition, not what DNABERT-S and ESM-2 learned. They
are for running the pipeline out of the box, not for classifying real data.

- `dnabert_s_mini/`: DNABERT-S architecture (2 layers, width 128) in a HuggingFace directory, with
  a 4096-token BPE tokenizer trained here on the lambda and Klebsiella genomes of `shared/data`.
- `esm2_mini.pt`: ESM-2 architecture (3 layers, width 160) as a fair-esm checkpoint.
- `classifier_300.pt`, `classifier_500.pt`: VirNucPro's MLP for their 128 + 160 features, trained
  by the workflow's `train` target on the lambda and Klebsiella sequences (`make builtin-models`).

`python -m virnucpro.model_store.builtin --data ../shared/data --out resources/models` rebuilds the two
embedding models; `make builtin-models` rebuilds everything, classifiers and demo input included.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from virnucpro.models.dnabert_s import DnabertS, DnabertSConfig, save_dnabert_s
from virnucpro.models.esm2 import ESM2, ESM2Config, save_fair_esm_checkpoint

DNABERT_S_MINI = DnabertSConfig(vocab_size=4096, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=256)
ESM2_MINI = ESM2Config(num_layers=3, embed_dim=160, attention_heads=5)
SEED = 20241121


def read_genomes(data_dir: Path) -> list[str]:
    """The sequences of the lambda genome and the Klebsiella chromosome and plasmids."""
    from virnucpro.io.sequences import read_sequences

    return [record.sequence.upper() for name in ("lambda_virus.fa.gz", "Klebs_HS11286.fna.xz")
            for record in read_sequences(data_dir / name)]


def train_dna_tokenizer(sequences: list[str], path: Path, vocab_size: int = 4096, piece: int = 1000) -> None:
    """A BPE tokenizer like DNABERT-2's: [UNK] [CLS] [SEP] [PAD] [MASK] first, [CLS] x [SEP] on encode."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=list("ACGTN"),
                                  show_progress=False)
    pieces = (s[i : i + piece] for s in sequences for i in range(0, len(s), piece))
    tokenizer.train_from_iterator(pieces, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    tokenizer.save(str(path))


def perturb_layer_norms(model: torch.nn.Module, generator: torch.Generator, scale: float = 0.1) -> None:
    """LayerNorms start at weight 1, bias 0; spread them a little so that they matter (random
    models for demonstration, tests and benchmarks)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                noise = torch.randn((2, *module.weight.shape), generator=generator).to(module.weight.device)
                module.weight.add_(scale * noise[0])
                module.bias.add_(scale * noise[1])


def build_embedding_models(data_dir: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)
    dnabert = DnabertS(DNABERT_S_MINI)
    perturb_layer_norms(dnabert, generator)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_json = Path(scratch) / "tokenizer.json"
        train_dna_tokenizer(read_genomes(data_dir), tokenizer_json, DNABERT_S_MINI.vocab_size)
        save_dnabert_s(dnabert, tokenizer_json, out_dir / "dnabert_s_mini", dtype=torch.float16)
    esm = ESM2(ESM2_MINI)
    perturb_layer_norms(esm, generator)
    save_fair_esm_checkpoint(esm, out_dir / "esm2_mini.pt", dtype=torch.float16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with lambda_virus.fa.gz and Klebs_HS11286.fna.xz")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. resources/models")
    args = parser.parse_args()
    build_embedding_models(args.data, args.out)


if __name__ == "__main__":
    main()
