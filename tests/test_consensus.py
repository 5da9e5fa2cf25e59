"""Stage 9: VirNucPro's output files, and the per-read table that accounts for every read."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from virnucpro.io.atomic import atomic_output
from virnucpro.io.ids import FRAME_NAMES
from virnucpro.io.schemas import READ_SCHEMA
from virnucpro.io.schemas import FRAME_PREDICTION_SCHEMA
from virnucpro.io.schemas import CHUNK_SUMMARY_SCHEMA, FRAME_SCHEMA
from virnucpro.io.tables import TableWriter
from virnucpro.stages import consensus
from virnucpro.stages.consensus import write_outputs
from virnucpro.stages.prediction import prediction_lines


def run_stage_9(directory, reads, chunks, frames, shards=1, lost_predictions=0, chunk_places=None):
    """Write the tables stages 1-8 would give and run stage 9 on them.

    reads: (read_id, length, ambiguous_bases, chunks); chunks: (read_index, chunk, frames, reason),
    at the (start, length) of `chunk_places` (0, 0 when not given); frames: (read_index, chunk,
    frame name, others score, virus score); the last `lost_predictions` frames get no prediction.
    Returns the read table."""
    chunk_places = chunk_places or [(0, 0)] * len(chunks)
    directory.mkdir(parents=True, exist_ok=True)
    with TableWriter(directory / "reads.arrow", READ_SCHEMA, 3) as table:
        table.write_columns({"read_index": range(len(reads)), "read_id": [r[0] for r in reads],
                             "length": [r[1] for r in reads], "ambiguous_bases": [r[2] for r in reads],
                             "chunks": [r[3] for r in reads], "origin_sequence": [None] * len(reads),
                             "origin_position": [None] * len(reads)})
    with TableWriter(directory / "chunks.arrow", CHUNK_SUMMARY_SCHEMA, 3) as table:
        table.write_columns({"read_index": [c[0] for c in chunks], "chunk": [c[1] for c in chunks],
                             "start": [p[0] for p in chunk_places], "length": [p[1] for p in chunk_places],
                             "ambiguous_bases": [0] * len(chunks), "frames": [c[2] for c in chunks],
                             "reason": [c[3] for c in chunks]})
    with TableWriter(directory / "frames.arrow", FRAME_SCHEMA, 3) as table:
        table.write_columns({"read_index": [f[0] for f in frames], "chunk": [f[1] for f in frames],
                             "frame": [FRAME_NAMES.index(f[2]) for f in frames], "protein": [""] * len(frames),
                             "nucleotide": [""] * len(frames)})
    others = np.array([f[3] for f in frames], dtype=np.float32)
    virus = np.array([f[4] for f in frames], dtype=np.float32)
    bounds = np.linspace(0, len(frames) - lost_predictions, shards + 1).astype(int)
    predictions, lines = [], []
    for shard, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        predictions.append(directory / f"{shard}.parquet")
        pq.write_table(pa.table({"row": np.arange(start, stop), "score_others": others[start:stop],
                                 "score_virus": virus[start:stop]}, schema=FRAME_PREDICTION_SCHEMA), predictions[-1])
        lines.append(directory / f"{shard}.txt")
        ids = [f"{reads[f[0]][0]}_chunk_{f[1]}{f[2]}" for f in frames[start:stop]]
        with atomic_output(lines[-1]) as out:
            out.write(prediction_lines(ids, others[start:stop], virus[start:stop]))
    counts = write_outputs("s", [directory / "reads.arrow"], [directory / "chunks.arrow"],
                           [directory / "frames.arrow"], predictions, lines, 300, "model.pt",
                           directory / "prediction_results.txt", directory / "highest.csv",
                           directory / "reads.parquet", directory / "regions.tsv")
    table = pq.read_table(directory / "reads.parquet")
    called = table.column("call").to_pylist()
    assert counts == {"virus": called.count("virus"), "others": called.count("others"),
                      "unclassified": called.count(None),
                      "viral_regions": (directory / "regions.tsv").read_text().count("\n") - 1}
    return table


def original_frames(reference_dir):
    """The original's frames and scores as stage-9 inputs (its IDs taken apart here, in the test)."""
    lines = (reference_dir / "prediction_results.txt").read_text().splitlines()[1:]
    reads, chunks, frames = [], [], []
    for frame_id, _, others, virus in (line.split("\t") for line in lines):
        read_id, chunk = frame_id[:-2].rsplit("_chunk_", 1)
        if not reads or reads[-1][0] != read_id:
            reads.append([read_id, 500, 0, 0])
        if not chunks or chunks[-1][:2] != [len(reads) - 1, int(chunk)]:
            chunks.append([len(reads) - 1, int(chunk), 0, None])
            reads[-1][3] += 1
        chunks[-1][2] += 1
        frames.append((len(reads) - 1, int(chunk), frame_id[-2:], np.float32(others), np.float32(virus)))
    return reads, chunks, frames


def test_prediction_results_reproduce_the_original_file(reference_dir, tmp_path):
    run_stage_9(tmp_path, *original_frames(reference_dir))
    assert (tmp_path / "prediction_results.txt").read_bytes() == (reference_dir / "prediction_results.txt").read_bytes()


def test_highest_score_file_reproduces_the_original(reference_dir, tmp_path):
    run_stage_9(tmp_path, *original_frames(reference_dir))
    expected = (reference_dir / "prediction_results_highestscore.csv").read_text()
    assert (tmp_path / "highest.csv").read_text() == expected


def test_highest_score_groups_by_chunk_sorted_and_ties_go_to_virus(tmp_path):
    reads = [("r2", 600, 0, 2), ("r10", 300, 0, 1)]
    chunks = [(0, 1, 1, None), (0, 2, 1, None), (1, 1, 2, None)]
    frames = [(0, 1, "F1", 0.6, 0.4), (0, 2, "F1", 0.5, 0.5), (1, 1, "F3", 0.5, 0.7), (1, 1, "R2", 0.7, 0.3)]
    run_stage_9(tmp_path, reads, chunks, frames)
    assert (tmp_path / "highest.csv").read_text().splitlines() == [
        "Modified_ID\tIs_Virus",
        "r10_chunk_1\tTrue",  # max score2 0.7 >= max score1 0.7
        "r2_chunk_1\tFalse",
        "r2_chunk_2\tTrue",  # a tie counts as virus, as in the original
    ]


def test_highest_score_sorts_beyond_one_run_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(consensus, "SORT_RUN_ROWS", 4)
    rng = np.random.default_rng(3)
    names = [f"read{rng.integers(10**6)}_{i}" for i in range(30)]
    reads = [(name, 300, 0, 1) for name in names]
    chunks = [(index, 1, 1, None) for index in range(30)]
    frames = [(index, 1, "F1", float(rng.random()), float(rng.random())) for index in range(30)]
    run_stage_9(tmp_path, reads, chunks, frames, shards=4)
    rows = (tmp_path / "highest.csv").read_text().splitlines()[1:]
    assert [row.split("\t")[0] for row in rows] == sorted(f"{name}_chunk_1" for name in names)
    assert [row.split("\t")[1] for row in rows] == [str(f[4] >= f[3]) for f in sorted(
        frames, key=lambda f: f"{names[f[0]]}_chunk_1")]


def test_frame_label_is_virus_only_when_score2_is_larger():
    lines = prediction_lines(["a_chunk_1F1", "b_chunk_1F1"], np.array([0.5, 0.25], dtype=np.float32),
                             np.array([0.5, 0.75], dtype=np.float32))
    assert [line.split("\t")[1] for line in lines.splitlines()] == ["others", "virus"]


def test_every_read_gets_a_row_with_a_call_or_a_reason(tmp_path):
    reads = [("long", 450, 0, 2), ("stops", 120, 0, 1), ("empty", 0, 0, 0), ("tiny", 2, 0, 1), ("nnn", 100, 90, 1),
             ("host", 150, 1, 1)]
    chunks = [(0, 1, 2, None), (0, 2, 0, "no_stop_free_frame"), (1, 1, 0, "no_stop_free_frame"), (3, 1, 0, "too_short"),
              (4, 1, 0, "too_ambiguous"), (5, 1, 2, None)]
    frames = [(0, 1, "F1", 0.7, 0.3), (0, 1, "R2", 0.25, 0.75), (5, 1, "F2", 0.8, 0.2), (5, 1, "R1", 0.6, 0.4)]
    table = run_stage_9(tmp_path, reads, chunks, frames)
    rows = {row["read_id"]: row for row in table.to_pylist()}
    assert table.column("read_id").to_pylist() == ["long", "stops", "empty", "tiny", "nnn", "host"]
    assert rows["long"]["call"] == "virus" and rows["long"]["frames"] == 2
    assert rows["long"]["best_frame"] == "long_chunk_1R2"
    # the maxima may come from different frames: virus 0.75 (R2) against others 0.7 (F1)
    assert rows["long"]["score_virus"] == pytest.approx(0.75) and rows["long"]["score_others"] == pytest.approx(0.7)
    assert rows["host"]["call"] == "others" and rows["host"]["is_virus"] is False
    # for an others read, the frame with the highest others score (F2 0.8), not the most viral one (R1 0.4)
    assert rows["host"]["best_frame"] == "host_chunk_1F2" and rows["host"]["score_virus"] == pytest.approx(0.4)
    assert (rows["long"]["classified_chunks"], rows["long"]["viral_chunks"], rows["long"]["viral_regions"]) == (1, 1, 1)
    assert rows["host"]["viral_chunk_fraction"] == 0 and rows["stops"]["viral_chunk_fraction"] is None
    assert {r: rows[r]["reason"] for r in ("stops", "empty", "tiny", "nnn")} == {
        "stops": "no_stop_free_frame", "empty": "empty_sequence", "tiny": "too_short", "nnn": "too_ambiguous"}
    for read in ("stops", "empty", "tiny", "nnn"):
        assert rows[read]["call"] is None and rows[read]["is_virus"] is None and rows[read]["score_virus"] is None
    assert rows["long"]["reason"] is None
    assert set(table.column("expected_length").to_pylist()) == {300}


def test_a_missing_frame_prediction_is_an_error_not_a_silent_loss(tmp_path):
    reads = [("r", 150, 0, 1), ("q", 150, 0, 1)]
    chunks = [(0, 1, 2, None), (1, 1, 1, None)]
    frames = [(0, 1, "F1", 0.5, 0.5), (0, 1, "F2", 0.5, 0.5), (1, 1, "F1", 0.5, 0.5)]
    run_stage_9(tmp_path / "whole", reads, chunks, frames)
    with pytest.raises(ValueError, match="frame predictions end at row 2, frames go on to row 3"):
        run_stage_9(tmp_path / "lost", reads, chunks, frames, lost_predictions=1)
    assert not (tmp_path / "lost" / "reads.parquet").exists()


def test_frames_that_do_not_match_their_chunks_are_an_error(tmp_path):
    reads = [("r", 150, 0, 1)]
    with pytest.raises(ValueError, match="do not match their chunks"):
        run_stage_9(tmp_path, reads, [(0, 1, 1, None)], [(0, 2, "F1", 0.5, 0.5)])


def test_read_ids_that_look_like_chunk_ids_stay_apart(tmp_path):
    """`x` cut into two chunks and a read literally named `x_chunk_1` never share a frame ID."""
    reads = [("x", 600, 0, 2), ("x_chunk_1", 150, 0, 1)]
    chunks = [(0, 1, 1, None), (0, 2, 0, "no_stop_free_frame"), (1, 1, 1, None)]
    frames = [(0, 1, "F1", 0.9, 0.1), (1, 1, "F1", 0.1, 0.9)]
    rows = {row["read_id"]: row for row in run_stage_9(tmp_path, reads, chunks, frames).to_pylist()}
    assert rows["x"]["call"] == "others" and rows["x_chunk_1"]["call"] == "virus"


def test_reads_and_frames_across_blocks_and_shards_give_the_same_table(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    reads, chunks, frames = [], [], []
    for index in range(40):
        reads.append((f"r{index}", 900, 0, 3))
        for chunk in (1, 2, 3):
            kept = int(rng.integers(0, 4))
            chunks.append((index, chunk, kept, None if kept else "no_stop_free_frame"))
            frames += [(index, chunk, name, float(rng.random()), float(rng.random())) for name in FRAME_NAMES[:kept]]
    whole = run_stage_9(tmp_path / "whole", reads, chunks, frames)
    monkeypatch.setattr(consensus, "READ_BLOCK_ROWS", 3)
    parted = run_stage_9(tmp_path / "parted", reads, chunks, frames, shards=7)
    assert parted.equals(whole)
    for name in ("prediction_results.txt", "highest.csv"):
        assert (tmp_path / "parted" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_viral_regions_are_runs_of_viral_chunks_that_unclassified_chunks_do_not_break():
    from virnucpro.stages.regions import viral_regions

    # sequence 0: virus virus others virus (unclassified); sequence 1: (unclassified) virus (unclassified)
    # virus; sequence 2 has no chunk; sequence 3 one others chunk. Chunks of 300 bases, 250 apart.
    sequence = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 3])
    number = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, 1])
    start = np.array([0, 250, 500, 750, 1000, 0, 250, 500, 750, 0])
    length = np.array([300, 300, 300, 300, 200, 300, 300, 300, 290, 300])
    classified = np.array([1, 1, 1, 1, 0, 0, 1, 0, 1, 1], dtype=bool)
    viral = np.array([1, 1, 0, 1, 0, 0, 1, 0, 1, 0], dtype=bool)
    score = np.array([0.9, 0.7, 0.1, 0.8, 0.0, 0.0, 0.6, 0.0, 1.0, 0.2])
    regions = viral_regions(4, sequence, number, start, length, classified, viral, score)
    assert regions.classified_chunks.tolist() == [4, 2, 0, 1] and regions.viral_chunks.tolist() == [3, 2, 0, 0]
    assert regions.regions.tolist() == [2, 1, 0, 0]
    assert regions.sequence.tolist() == [0, 0, 1] and regions.number.tolist() == [1, 2, 1]
    assert regions.start.tolist() == [1, 751, 251] and regions.end.tolist() == [550, 1050, 1040]
    assert regions.first_chunk.tolist() == [1, 4, 2] and regions.last_chunk.tolist() == [2, 4, 4]
    assert regions.region_viral_chunks.tolist() == [2, 1, 2]
    assert regions.mean_score == pytest.approx([0.8, 0.8, 0.8])


def test_a_contig_with_two_viral_stretches_gets_them_as_regions(tmp_path, monkeypatch, prepare, data_dir):
    """A Klebsiella stretch with two lambda stretches put in, through stages 1-2 and 9; the frames of
    chunks that lie mostly in lambda get viral scores, the others host scores."""
    from virnucpro.io.sequences import read_sequences
    from virnucpro.io.tables import TableReader

    host = next(read_sequences(data_dir / "Klebs_HS11286.fna.xz")).sequence
    phage = next(read_sequences(data_dir / "lambda_virus.fa.gz")).sequence
    contig = host[:20_000] + phage[:6_000] + host[20_000:50_000] + phage[10_000:13_000] + host[50_000:60_000]
    stretches = [(20_000, 26_000), (56_000, 59_000)]  # 0-based, end exclusive
    (tmp_path / "contig.fa").write_text(f">contig\n{contig}\n>read\n{phage[280:560]}\n")
    prepared = prepare(tmp_path / "contig.fa", 300)
    chunks = TableReader(prepared.chunk_summary[0]).read(0, 10**6).to_pylist()
    frames = TableReader(prepared.frames[0]).read(0, 10**7).to_pylist()
    place = {(c["read_index"], c["chunk"]): (c["start"], c["length"]) for c in chunks}

    def viral(read_index, chunk):
        start, length = place[(read_index, chunk)]
        return read_index == 1 or any(a <= start + length / 2 < b for a, b in stretches)

    monkeypatch.setattr(consensus, "CHUNK_BLOCK_ROWS", 7)  # the contig alone is more: a block of its own
    contig_chunks = sum(c["read_index"] == 0 for c in chunks)
    table = run_stage_9(
        tmp_path / "out", [("contig", len(contig), 0, contig_chunks), ("read", 280, 0, 1)],
        [(c["read_index"], c["chunk"], c["frames"], c["reason"]) for c in chunks],
        [(f["read_index"], f["chunk"], FRAME_NAMES[f["frame"]], *((0.1, 0.9) if viral(f["read_index"], f["chunk"])
                                                                 else (0.8, 0.2))) for f in frames],
        chunk_places=[place[(c["read_index"], c["chunk"])] for c in chunks])

    rows = (tmp_path / "out" / "regions.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["sequence_id", "sequence_length", "region", "start", "end", "first_chunk",
                                   "last_chunk", "viral_chunks", "mean_score_virus"]
    regions = [dict(zip(rows[0].split("\t"), row.split("\t"))) for row in rows[1:]]
    assert [(r["sequence_id"], r["region"]) for r in regions] == [("contig", "1"), ("contig", "2"), ("read", "1")]
    classified = [c for c in chunks if c["read_index"] == 0 and c["frames"] > 0]
    for region, (a, b) in zip(regions, stretches):
        inside = [c for c in classified if viral(0, c["chunk"])]
        inside = [c for c in inside if a <= c["start"] + c["length"] / 2 < b]
        assert int(region["start"]) == inside[0]["start"] + 1
        assert int(region["end"]) == inside[-1]["start"] + inside[-1]["length"]
        assert abs(int(region["start"]) - 1 - a) < 300 and abs(int(region["end"]) - b) < 300
        assert int(region["viral_chunks"]) == len(inside) and float(region["mean_score_virus"]) == pytest.approx(0.9)
    assert (regions[2]["start"], regions[2]["end"]) == ("1", "280")
    contig_row = table.to_pylist()[0]
    assert contig_row["call"] == "virus" and contig_row["viral_regions"] == 2
    assert contig_row["classified_chunks"] == len(classified)
    assert contig_row["viral_chunks"] == sum(viral(0, c["chunk"]) for c in classified)
    assert contig_row["viral_chunk_fraction"] == pytest.approx(contig_row["viral_chunks"] / len(classified))


def test_the_four_outputs_appear_together_or_not_at_all(tmp_path, monkeypatch):
    """A job that dies while writing the last of them leaves none under its final name."""
    reads = [("r1", 300, 0, 1), ("r2", 300, 0, 1)]
    chunks = [(0, 1, 1, None), (1, 1, 1, None)]
    frames = [(0, 1, "F1", 0.2, 0.8), (1, 1, "R2", 0.7, 0.3)]

    def dies_half_way(paths, out):
        out.write(b"r1_chunk_1F1\tvirus")
        raise MemoryError("killed while writing prediction_results.txt")

    monkeypatch.setattr(consensus, "concatenate_files", dies_half_way)
    with pytest.raises(MemoryError):
        run_stage_9(tmp_path, reads, chunks, frames, shards=2)
    for name in ("prediction_results.txt", "highest.csv", "regions.tsv", "reads.parquet"):
        assert not (tmp_path / name).exists(), name
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # nor temporaries, nor scratch
    monkeypatch.undo()
    run_stage_9(tmp_path, reads, chunks, frames, shards=2)
    assert all((tmp_path / name).exists() for name in ("prediction_results.txt", "highest.csv", "regions.tsv", "reads.parquet"))


def test_a_read_shorter_than_the_minimum_gets_scores_but_no_call(tmp_path):
    """A 3-bp read was called virus with score 1.0: the classifier scores a peptide of one amino acid
    as confidently as any."""
    reads = [("codon", 3, 0, 1), ("long", 150, 0, 1)]
    chunks = [(0, 1, 1, None), (1, 1, 1, None)]
    frames = [(0, 1, "F1", 0.0, 1.0), (1, 1, "F1", 0.1, 0.9)]
    directory = tmp_path / "stage9"
    run_stage_9(directory, reads, chunks, frames)
    rows = {row["read_id"]: row for row in pq.read_table(directory / "reads.parquet").to_pylist()}
    assert rows["codon"]["call"] == "virus"  # without a minimum (min_codons=1), as VirNucPro calls it
    # the same with the workflow's minimum
    from virnucpro.stages.consensus import write_outputs
    write_outputs("s", [directory / "reads.arrow"], [directory / "chunks.arrow"], [directory / "frames.arrow"],
                  [directory / "0.parquet"], [directory / "0.txt"], 300, "model.pt", tmp_path / "results.txt",
                  tmp_path / "highest.csv", tmp_path / "reads.parquet", tmp_path / "regions.tsv", min_codons=10)
    rows = {row["read_id"]: row for row in pq.read_table(tmp_path / "reads.parquet").to_pylist()}
    assert rows["codon"]["call"] is None and rows["codon"]["reason"] == "below_min_codons"
    assert rows["codon"]["score_virus"] == 1.0 and rows["codon"]["viral_regions"] == 0
    assert rows["long"]["call"] == "virus" and rows["long"]["reason"] is None
    assert (tmp_path / "results.txt").read_bytes() == (directory / "prediction_results.txt").read_bytes()
    assert (tmp_path / "highest.csv").read_text() == "Modified_ID\tIs_Virus\ncodon_chunk_1\tTrue\nlong_chunk_1\tTrue\n"
    assert (tmp_path / "regions.tsv").read_text().count("\n") == 2  # the header and the long read's region
