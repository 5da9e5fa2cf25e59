"""The names every stage shares: read, chunk and frame IDs, part and shard names, training labels.

IDs follow VirNucPro: chunk k (from 1) of read `<read>` is `<read>_chunk_<k>`, and its frames are
`<read>_chunk_<k>F1..F3` (forward, offsets 0-2) and `R1..R3` (reverse complement). Inside the
pipeline frames are keyed by integers (read index, chunk, frame 0-5); these strings are made only
for the files people read.
"""

from __future__ import annotations

import re

_ORIGIN = re.compile(r"(?:^|\s)origin=(\S+)")
_ORIGIN_VALUE = re.compile(r"(\S+):([1-9]\d*)")

_ORIGIN = re.compile(r"(?:^|\s)origin=(\S+)")

_ORIGIN_VALUE = re.compile(r"(\S+):([1-9]\d*)")


def chunk_id(read_id: str, number: int) -> str:
    return f"{read_id}_chunk_{number}"


def parse_origin(description: str) -> tuple[str | None, int | None]:
    """`origin=<sequence>:<position>` from a header, or (None, None); raises ValueError if malformed."""
    found = _ORIGIN.search(description)
    if not found:
        return None, None
    value = _ORIGIN_VALUE.fullmatch(found.group(1))
    if not value:
        raise ValueError(f"origin must be <sequence>:<1-based position>, got '{found.group(1)}'")
    return value.group(1), int(value.group(2))

FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")


def frame_id(read_id: str, chunk: int, frame: int) -> str:
    """VirNucPro's name of a frame: `<read>_chunk_<k><F1..R3>`."""
    return f"{chunk_id(read_id, chunk)}{FRAME_NAMES[frame]}"

# Labels of the training table, and the class index VirNucPro's MLP gives each.
TRAINING_LABELS = {"host": 0, "viral": 1}


def unit_names(count: int) -> list[str]:
    """Names of `count` parts or shards: zero-padded numbers that sort in order."""
    width = max(3, len(str(count - 1)))
    return [f"{index:0{width}d}" for index in range(count)]
