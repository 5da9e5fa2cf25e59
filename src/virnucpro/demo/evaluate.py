"""Precision and recall of a run's calls on reads whose class is known from their name (the demo
input: `lambda_...` viral, `kpneumoniae_...` host), overall and by read length, as README shows
them for each calls preset.

    python -m virnucpro.demo.evaluate default=runs/default/read_predictions.parquet \\
        conservative=runs/conservative/read_predictions.parquet
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow.parquet as pq

from virnucpro.stages.training import LENGTH_BINS

VIRAL_PREFIX, HOST_PREFIX = "lambda_", "kpneumoniae_"


def call_metrics(read_table: str) -> list[dict]:
    """Per length bin (and `all`): reads, classified, and precision, recall and F1 of `virus`
    against the read's class (a provirus counts as not virus; unclassified reads as missed)."""
    table = pq.read_table(read_table, columns=["read_id", "length", "call"]).to_pydict()
    viral = np.array([name.startswith(VIRAL_PREFIX) for name in table["read_id"]])
    host = np.array([name.startswith(HOST_PREFIX) for name in table["read_id"]])
    if not (viral | host).all():
        raise ValueError(f"{read_table}: reads not named {VIRAL_PREFIX}... or {HOST_PREFIX}...")
    called = np.array([call == "virus" for call in table["call"]])
    classified = np.array([call is not None for call in table["call"]])
    lengths = np.array(table["length"])
    rows = []
    for low, high in [(0, LENGTH_BINS[-1]), *zip(LENGTH_BINS[:-1], LENGTH_BINS[1:])]:
        chosen = (lengths >= low) & (lengths < high)
        true_positive = int((called & viral & chosen).sum())
        precision = true_positive / max(1, int((called & chosen).sum()))
        recall = true_positive / max(1, int((viral & chosen).sum()))
        rows.append({"lengths": "all" if low == 0 and high == LENGTH_BINS[-1] else
                     (f"{low}+" if high == LENGTH_BINS[-1] else f"{low}-{high - 1}"),
                     "reads": int(chosen.sum()), "classified": int((classified & chosen).sum()),
                     "precision": precision, "recall": recall,
                     "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="name=read_predictions.parquet")
    args = parser.parse_args()
    print("| calls | read length | reads | classified | precision | recall | F1 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for run in args.runs:
        name, path = run.split("=", 1)
        for row in call_metrics(path):
            print(f"| {name} | {row['lengths']} | {row['reads']} | {row['classified']} | {row['precision']:.3f} | "
                  f"{row['recall']:.3f} | {row['f1']:.3f} |")


if __name__ == "__main__":
    main()
