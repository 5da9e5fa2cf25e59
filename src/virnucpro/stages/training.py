"""Training VirNucPro's classifier on labelled sequences (the workflow's `train` target).

Stages 1-7 turn every labelled input into merged features, as for prediction. Then:

- Split by source region. Each frame belongs to a region of `region_length` bases of the sequence
  it comes from: its read's declared `origin=` (see `chunking`) for placed reads, otherwise the
  read or contig itself, cut into regions by chunk position. Whole regions are held out for
  evaluation (per label, seeded), so overlapping chunks of one genome region are never on both
  sides; a further share of the training regions is set aside for early stopping.
- Balance the classes in each part by seeded subsampling of the larger one.
- Train the original recipe: MLP (features -> 512 -> 2, BatchNorm, dropout 0.5), cross-entropy,
  SGD (learning rate 2e-4, momentum 0.9), StepLR, early stopping on the validation loss with the
  best weights restored. The hyper-parameters come from the config.
- Evaluate on the held-out regions (accuracy, precision, recall, F1, ROC AUC; per frame and per
  chunk with VirNucPro's consensus rule), and write the model in the project's format with its
  metadata, a report with the ROC and training curves, and the list of held-out regions.

Unlike VirNucPro's train.py, early stopping uses a validation split, not the test split.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from virnucpro.io.atomic import atomic_output
from virnucpro.io.features import MergedFeatures
from virnucpro.io.ids import TRAINING_LABELS
from virnucpro.io.tables import PartedTable
from virnucpro.models.classifier import MLPClassifier, save_classifier
from virnucpro.stages.chunking import chunk_start


@dataclass(frozen=True)
class Hyperparameters:
    hidden_dim: int = 512
    dropout: float = 0.5
    learning_rate: float = 2e-4
    momentum: float = 0.9
    batch_size: int = 32
    step_size: int = 10
    gamma: float = 0.85
    max_epochs: int = 200
    patience: int = 5


@dataclass
class LabelledFrames:
    chunks: np.ndarray  # [frames] the chunk of each frame, numbered over the whole training set
    reads: np.ndarray  # [frames] the read of each frame, numbered over the whole training set
    read_lengths: np.ndarray  # [frames] the length of each frame's read
    features: np.ndarray  # [frames, dim] float32
    labels: np.ndarray  # [frames] 0 host, 1 viral
    groups: list[str]  # source region of each frame
    inputs: list[str]  # training input each frame comes from
    models: list[dict]  # identities of the embedding models that made the features


def frame_regions(reads: pa.Table, read_index: np.ndarray, chunk: np.ndarray, expected_length: int,
                  region_length: int) -> list[str]:
    """Source region of each frame, `<sequence>:<region index>`, from its read (a table of the
    reads, indexed from their first read index) and its chunk number."""
    row = read_index - reads.column("read_index")[0].as_py()
    length = reads.column("length").to_numpy()[row]
    start = chunk_start(length, chunk, expected_length)
    middle = start + np.minimum(expected_length, length - start) // 2
    origin_sequence = reads.column("origin_sequence").to_pylist()
    origin_position = reads.column("origin_position").to_pylist()
    read_ids = reads.column("read_id").to_pylist()
    regions = []
    for r, chunk_middle, read_length in zip(row.tolist(), middle.tolist(), length.tolist()):
        if origin_sequence[r] is not None:  # a placed read: the middle of the read on its source
            source, position = origin_sequence[r], origin_position[r] - 1 + read_length // 2
        else:
            source, position = read_ids[r], chunk_middle
        regions.append(f"{source}:{position // region_length}")
    return regions


def load_labelled_frames(inputs: list[dict], expected_length: int, region_length: int) -> LabelledFrames:
    """`inputs`: dicts with name, label, the part files of its reads and frames, and the feature
    files of its shards, `dnabert_s` and `esm2` (stages 1-6), in shard order."""
    chunks, read_numbers, read_lengths, features, labels, groups, names, models = [], [], [], [], [], [], [], None
    chunks_before = reads_before = 0
    for entry in inputs:
        reads = PartedTable(entry["reads"])
        frames = PartedTable(entry["frames"], columns=["read_index", "chunk"])
        keys = frames.read(0, frames.num_rows)
        read_index, chunk = keys.column("read_index").to_numpy(), keys.column("chunk").to_numpy()
        for nucleotide, protein in zip(entry["dnabert_s"], entry["esm2"], strict=True):
            merged = MergedFeatures(nucleotide, protein)
            if models is None:
                models = merged.models
            elif [m["fingerprint"] for m in merged.models] != [m["fingerprint"] for m in models]:
                raise ValueError(f"{nucleotide}, {protein}: features from other embedding models than the rest of the "
                                 "training set")
            features += [vectors for _, vectors in merged.blocks()]
        if len(read_index):
            new_chunk = np.r_[True, (np.diff(read_index) != 0) | (np.diff(chunk) != 0)]
            chunks.append(chunks_before + np.cumsum(new_chunk) - 1)
            chunks_before = int(chunks[-1][-1]) + 1
            read_numbers.append(reads_before + read_index)
            reads_before += reads.num_rows
            read_table = reads.read(0, reads.num_rows)
            read_lengths.append(read_table.column("length").to_numpy()[read_index - read_table.column("read_index")[0].as_py()])
            groups += frame_regions(read_table, read_index, chunk, expected_length, region_length)
        labels += [TRAINING_LABELS[entry["label"]]] * len(read_index)
        names += [entry["name"]] * len(read_index)
    if not features:
        raise ValueError("the training inputs have no stop-free frames")
    return LabelledFrames(np.concatenate(chunks), np.concatenate(read_numbers), np.concatenate(read_lengths),
                          np.concatenate(features), np.array(labels, dtype=np.int64), groups,
                          names, models)


def split_by_group(groups: list[str], labels: np.ndarray, fraction: float, seed: int,
                   eligible: np.ndarray | None = None) -> np.ndarray:
    """Mask of frames held out: whole groups, each drawn with probability `fraction` from a hash
    of the seed and its name, and at least one per label that has several groups.

    A group's draw does not depend on the other groups, so classifiers trained for 300 and 500 bp,
    whose chunks cover slightly different sets of regions, hold out the same regions.
    """
    eligible = np.ones(len(groups), dtype=bool) if eligible is None else eligible
    groups = np.asarray(groups, dtype=object)
    held_out = np.zeros(len(groups), dtype=bool)
    for label in np.unique(labels[eligible]):
        members = eligible & (labels == label)
        names = np.unique(groups[members])
        if len(names) < 2:
            continue
        draws = np.array([_uniform_draw(seed, name) for name in names])
        chosen = names[draws < fraction] if (draws < fraction).any() else names[[draws.argmin()]]
        held_out |= members & np.isin(groups, chosen)
    return held_out


def _uniform_draw(seed: int, name: str) -> float:
    """A number in [0, 1) fixed by the seed and the name, the same on every machine."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def balanced(indices: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """`indices` with the larger class subsampled (seeded) to the size of the smaller one."""
    rng = np.random.default_rng(seed)
    by_label = [indices[labels[indices] == label] for label in (0, 1)]
    size = min(len(members) for members in by_label)
    return np.sort(np.concatenate([rng.choice(members, size, replace=False) for members in by_label]))


def train_mlp(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
              hyper: Hyperparameters, seed: int) -> tuple[MLPClassifier, list[dict]]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MLPClassifier(train_x.shape[1], hyper.hidden_dim, 2, hyper.dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=hyper.learning_rate, momentum=hyper.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=hyper.step_size, gamma=hyper.gamma)
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    history, best_loss, best_state, stale = [], float("inf"), None, 0
    for epoch in range(1, hyper.max_epochs + 1):
        model.train()
        losses = []
        for batch in np.array_split(rng.permutation(len(x)), max(1, len(x) // hyper.batch_size)):
            if len(batch) < 2:
                continue  # BatchNorm needs two rows
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
        val_loss, val_accuracy = _loss_and_accuracy(model, val_x, val_y)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "validation_loss": val_loss,
                        "validation_accuracy": val_accuracy})
        if val_loss < best_loss:
            best_loss, best_state, stale = val_loss, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= hyper.patience:
                break
    model.load_state_dict(best_state)
    return model.eval(), history


def class_probabilities(model: MLPClassifier, x: np.ndarray) -> np.ndarray:
    """[frames, 2]: score1 (others) and score2 (virus)."""
    with torch.inference_mode():
        return torch.softmax(model.eval()(torch.from_numpy(x)), dim=1).numpy()


def _loss_and_accuracy(model: MLPClassifier, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    with torch.inference_mode():
        logits = model.eval()(torch.from_numpy(x))
        loss = F.cross_entropy(logits, torch.from_numpy(y)).item()
    return loss, float((logits.argmax(1).numpy() == y).mean())


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score, from the highest down."""
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    true_positives = np.cumsum(labels)[last_of_each_score]
    false_positives = (last_of_each_score + 1) - true_positives
    return (np.r_[0, false_positives / max(1, (labels == 0).sum())],
            np.r_[0, true_positives / max(1, (labels == 1).sum())])


def binary_metrics(labels: np.ndarray, predicted: np.ndarray, scores: np.ndarray) -> dict:
    """Accuracy, precision, recall, F1 (virus is positive) and ROC AUC."""
    tp = int(((predicted == 1) & (labels == 1)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    fpr, tpr = roc_curve(labels, scores)
    return {"n": int(len(labels)), "viral": int(labels.sum()), "accuracy": float((predicted == labels).mean()),
            "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "roc_auc": float(np.trapezoid(tpr, fpr))}


# Read lengths of the metrics by length: a classifier that had learnt length instead of its classes
# would show it here (the built-in ones once did).
LENGTH_BINS = (0, 150, 300, 500, 750, 1_000_000_000)


def consensus_metrics(units: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[dict, np.ndarray]:
    """Metrics over groups of frames (chunks or reads) by VirNucPro's consensus (virus iff the
    highest virus score is at least the highest others score), and each group's first row."""
    _, first_row, unit_of_row = np.unique(units, return_index=True, return_inverse=True)
    best = np.full((len(first_row), 2), -np.inf, dtype=np.float32)
    np.maximum.at(best, unit_of_row, scores)
    calls = (best[:, 1] >= best[:, 0]).astype(np.int64)
    return binary_metrics(labels[first_row], calls, best[:, 1]), first_row


def evaluate(model: MLPClassifier, frames: LabelledFrames, balanced_rows: np.ndarray,
             rows: np.ndarray) -> tuple[dict, dict]:
    """Metrics per frame (on `balanced_rows`, the classes balanced), and per chunk and per read
    (VirNucPro's consensus over all their frames in `rows`), also by read length."""
    scores = class_probabilities(model, frames.features[balanced_rows])
    labels = frames.labels[balanced_rows]
    per_frame = binary_metrics(labels, (scores[:, 1] > scores[:, 0]).astype(np.int64), scores[:, 1])
    fpr, tpr = roc_curve(labels, scores[:, 1])
    scores, labels = class_probabilities(model, frames.features[rows]), frames.labels[rows]
    per_chunk, _ = consensus_metrics(frames.chunks[rows], labels, scores)
    per_read, _ = consensus_metrics(frames.reads[rows], labels, scores)
    lengths = frames.read_lengths[rows]
    by_length = []
    for low, high in zip(LENGTH_BINS[:-1], LENGTH_BINS[1:]):
        chosen = (lengths >= low) & (lengths < high)
        if chosen.any():
            metrics, _ = consensus_metrics(frames.reads[rows][chosen], labels[chosen], scores[chosen])
            by_length.append({"min_length": low, "max_length": high - 1, **metrics})
    return ({"frames": per_frame, "chunks": per_chunk, "reads": per_read, "reads_by_length": by_length},
            {"fpr": fpr, "tpr": tpr})


def write_report(path: Path, roc_png: Path, curve_png: Path, metrics: dict, history: list[dict], roc: dict,
                 summary: dict) -> None:
    from matplotlib.figure import Figure

    from virnucpro.io.atomic import save_figure

    figure = Figure(figsize=(4.5, 4.5), layout="tight")
    axis = figure.subplots()
    axis.plot(roc["fpr"], roc["tpr"], label=f"frames, AUC {metrics['frames']['roc_auc']:.3f}")
    axis.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC on held-out regions")
    axis.legend(loc="lower right")
    save_figure(figure, roc_png, dpi=120)
    figure = Figure(figsize=(6, 4), layout="tight")
    axis = figure.subplots()
    epochs = [h["epoch"] for h in history]
    axis.plot(epochs, [h["train_loss"] for h in history], label="training loss")
    axis.plot(epochs, [h["validation_loss"] for h in history], label="validation loss")
    axis.set(xlabel="epoch", ylabel="cross-entropy", title="Training curve")
    axis.legend()
    save_figure(figure, curve_png, dpi=120)

    rows = ["| level | n | viral | accuracy | precision | recall | F1 | ROC AUC |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for level in ("frames", "chunks", "reads"):
        m = metrics[level]
        rows.append(f"| {level} | {m['n']} | {m['viral']} | {m['accuracy']:.4f} | {m['precision']:.4f} | "
                    f"{m['recall']:.4f} | {m['f1']:.4f} | {m['roc_auc']:.4f} |")
    by_length = ["| read length | reads | viral | accuracy | precision | recall | F1 | ROC AUC |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in metrics["reads_by_length"]:
        span = f"{m['min_length']}+" if m["max_length"] >= LENGTH_BINS[-1] - 1 else f"{m['min_length']}-{m['max_length']}"
        by_length.append(f"| {span} | {m['n']} | {m['viral']} | {m['accuracy']:.4f} | {m['precision']:.4f} | "
                         f"{m['recall']:.4f} | {m['f1']:.4f} | {m['roc_auc']:.4f} |")
    lines = [
        f"# Classifier training report (expected length {summary['expected_length']})", "",
        f"Trained {summary['trained_at']} on {summary['frames']['train']} frames, early stopping on "
        f"{summary['frames']['validation']} frames, evaluated on {summary['frames']['held_out']} frames of "
        f"{summary['held_out_regions']} held-out regions of {summary['region_length']} bases "
        f"(classes balanced in each part; seed {summary['seed']}). Best epoch {summary['best_epoch']} of "
        f"{len(history)}.", "",
        "## Held-out metrics", "", *rows, "",
        "Per chunk and per read: VirNucPro's consensus over the chunk's or the read's frames (virus iff its "
        "highest virus score is at least its highest others score).", "",
        "## Held-out reads by length", "", *by_length, "",
        f"![ROC curve]({roc_png.name})", "", f"![Training curve]({curve_png.name})", "",
        "## Inputs", "", "| name | label | path | frames |", "|---|---|---|---:|",
        *[f"| {i['name']} | {i['label']} | {i['path']} | {i['frames']} |" for i in summary["inputs"]], "",
        "## Embedding models", "",
        *[f"- {m['kind']}: {m['architecture']} (fingerprint {m['fingerprint']})" for m in summary["embedding_models"]],
        "", "## Hyper-parameters", "", *[f"- {k}: {v}" for k, v in summary["hyperparameters"].items()],
    ]
    with atomic_output(path) as out:
        out.write("\n".join(lines) + "\n")


def run_training(inputs: list[dict], expected_length: int, region_length: int, holdout_fraction: float,
                 validation_fraction: float, seed: int, hyper: Hyperparameters, outputs: dict) -> dict:
    """The whole `train` target after stage 7; `outputs` maps model, metrics, report, roc, curve, holdout."""
    frames = load_labelled_frames(inputs, expected_length, region_length)
    if set(np.unique(frames.labels)) != {0, 1}:
        raise ValueError("training needs frames of both labels, viral and host")
    held_out = split_by_group(frames.groups, frames.labels, holdout_fraction, seed)
    validation = split_by_group(frames.groups, frames.labels, validation_fraction / (1 - holdout_fraction),
                                seed + 1, eligible=~held_out)
    for name, mask in (("held-out", held_out), ("validation", validation), ("training", ~held_out & ~validation)):
        if set(np.unique(frames.labels[mask])) != {0, 1}:
            raise ValueError(f"the {name} part has no frames of one label: too few source regions; "
                             "use a smaller training.region_length or more input")
    parts = {name: balanced(np.flatnonzero(mask), frames.labels, seed)
             for name, mask in (("train", ~held_out & ~validation), ("validation", validation), ("held_out", held_out))}
    model, history = train_mlp(frames.features[parts["train"]], frames.labels[parts["train"]],
                               frames.features[parts["validation"]], frames.labels[parts["validation"]], hyper, seed)
    metrics, roc = evaluate(model, frames, parts["held_out"], np.flatnonzero(held_out))
    best_epoch = min(history, key=lambda h: h["validation_loss"])["epoch"]

    models = [{key: value for key, value in m.items() if key != "source"} for m in frames.models]
    summary = {
        "expected_length": expected_length, "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "region_length": region_length, "holdout_fraction": holdout_fraction,
        "validation_fraction": validation_fraction, "seed": seed, "best_epoch": best_epoch,
        "frames": {name: int(len(rows)) for name, rows in parts.items()},
        "held_out_regions": len({frames.groups[i] for i in np.flatnonzero(held_out)}),
        "inputs": [{"name": i["name"], "label": i["label"], "path": i["path"],
                    "frames": sum(n == i["name"] for n in frames.inputs)} for i in inputs],
        "embedding_models": models, "hyperparameters": asdict(hyper), "metrics": metrics,
    }
    save_classifier(model, outputs["model"], {
        "expected_length": expected_length, "feature_dims": {m["kind"]: m["dim"] for m in models},
        "embedding_models": models, "training": summary,
        "description": "trained by this project's `train` target"})
    with atomic_output(outputs["metrics"]) as out:
        json.dump({**summary, "history": history}, out, indent=2)
    write_report(Path(outputs["report"]), Path(outputs["roc"]), Path(outputs["curve"]), metrics, history, roc, summary)
    with atomic_output(outputs["holdout"]) as out:
        out.write("region\tlabel\tframes\n")
        regions, counts = np.unique(np.asarray(frames.groups, dtype=object)[held_out], return_counts=True)
        label_of = {frames.groups[i]: frames.labels[i] for i in np.flatnonzero(held_out)}
        for region, count in zip(regions, counts):
            out.write(f"{region}\t{'viral' if label_of[region] else 'host'}\t{count}\n")
    return summary
