"""The report's figures, drawn with matplotlib from the telemetry tables and the sample summaries.

The telemetry figures take the tables of `virnucpro.reporting.timing` (jobs in pipeline order, which also
gives each stage its colour). Times are seconds since the run's first job started (its process
start). Where a figure has no data (a run without a GPU has no NVML samples) it says so in place
of the plot.
"""

from __future__ import annotations


import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.patches import Patch


WIDTH = 11  # inches
# Distinct colours, none grey (the start-up shade and the not-classified reads are grey).
_COLOURS = [colour for index, colour in enumerate(matplotlib.colormaps["tab10"].colors) if index != 7] + list(
    matplotlib.colormaps["Dark2"].colors[:7])
NO_DATA_HEIGHT = 2.0  # inches


def _stage_colours(jobs: pl.DataFrame) -> dict[str, str]:
    stages = jobs["stage"].unique(maintain_order=True)
    return {stage: _COLOURS[index % len(_COLOURS)] for index, stage in enumerate(stages)}


def _seconds_since(times: pl.Series, origin) -> np.ndarray:
    return ((times - origin).dt.total_microseconds() / 1e6).to_numpy()


def gpu_labels(jobs: pl.DataFrame) -> pl.DataFrame:
    """`job` and `gpu_label`: a short name of the GPU each GPU job leased (its UUID's start, and the host
    when the run used several), null for the other jobs."""
    details = pl.col("details").struct
    several_hosts = jobs.filter(details.field("leased_gpu").is_not_null())["host"].n_unique() > 1
    short = details.field("leased_gpu").str.slice(0, 12)
    return jobs.select("job", gpu_label=pl.concat_str(pl.col("host"), pl.lit(" "), short) if several_hosts else short)


def _no_data(message: str) -> Figure:
    figure = Figure(figsize=(WIDTH, NO_DATA_HEIGHT))
    axis = figure.subplots()
    axis.set_axis_off()
    axis.text(0.5, 0.5, message, ha="center", va="center", fontsize=16, transform=axis.transAxes)
    return figure


def job_timeline(jobs: pl.DataFrame) -> Figure:
    """One bar per job, by stage, from its start to its end; before it, lighter, its start-up."""
    jobs = jobs.join(gpu_labels(jobs), on="job", maintain_order="left")
    origin = jobs["process_start"].min()
    starts, walls = _seconds_since(jobs["start"], origin), jobs["wall_seconds"].to_numpy()
    startups = starts - _seconds_since(jobs["process_start"], origin)
    colours = _stage_colours(jobs)
    figure = Figure(figsize=(WIDTH, min(40, 1.6 + 0.24 * jobs.height)), layout="constrained")
    axis = figure.subplots()
    rows = np.arange(jobs.height)
    colour = [colours[stage] for stage in jobs["stage"]]
    axis.barh(rows, startups, left=starts - startups, color=colour, alpha=0.35, height=0.7)
    axis.barh(rows, walls, left=starts, color=colour, height=0.7,
              edgecolor=["red" if status != "ok" else "none" for status in jobs["status"]])
    labels = [f"{stage} {sample}.{unit}" + (f"  [{gpu}]" if gpu else "")
              for stage, sample, unit, gpu in jobs.select("stage", "sample", "unit", "gpu_label").iter_rows()]
    axis.set_yticks(rows, labels if jobs.height <= 150 else [""] * jobs.height, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("seconds since the run's first job started")
    axis.set_title("Jobs: start-up (light) and run time, by stage; GPU jobs name their GPU")
    axis.grid(axis="x", alpha=0.3)
    figure.legend(handles=[Patch(color=c, label=s) for s, c in colours.items()]
                  + [Patch(color="grey", alpha=0.35, label="start-up (interpreter, imports)")],
                  fontsize=8, loc="outside right upper")
    return figure


def gpu_usage(jobs: pl.DataFrame, gpu_samples: pl.DataFrame) -> Figure:
    """NVML utilisation, memory and power over time, one line per GPU (a gap between its jobs)."""
    samples = gpu_samples.join(gpu_labels(jobs), on="job").sort("job", "time")
    if samples.height == 0:
        return _no_data("no GPU samples\n(no job ran on a GPU with NVML readings)")
    figure = Figure(figsize=(WIDTH, 7.5), layout="constrained")
    origin = jobs["process_start"].min()
    axes = figure.subplots(3, 1, sharex=True)
    gpus = samples["gpu_label"].unique(maintain_order=True).to_list()
    metrics = (("gpu_util", "GPU utilisation %", 1), ("memory_used_mb", "memory used GiB", 1 / 1024),
               ("power_w", "power W", 1))
    for axis, (column, label, scale) in zip(axes, metrics):
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if samples[column].null_count() == samples.height:
            axis.text(0.5, 0.5, "not available", ha="center", va="center", transform=axis.transAxes)
            continue
        for job, job_samples in samples.group_by("job", maintain_order=True):
            gpu = job_samples["gpu_label"][0]
            values = job_samples[column].cast(pl.Float64).fill_null(np.nan).to_numpy() * scale  # gaps where missing
            axis.plot(_seconds_since(job_samples["time"], origin), values, marker=".", markersize=3,
                      color=_COLOURS[gpus.index(gpu) % len(_COLOURS)])  # a marker: a reading between gaps shows
        axis.set_ylim(0, 105 if column == "gpu_util" else None)
    handles = [Patch(color=_COLOURS[index % len(_COLOURS)], label=gpu) for index, gpu in enumerate(gpus)]
    axes[0].legend(handles=handles, fontsize=8, loc="upper right")
    axes[0].set_title("GPUs over the run (NVML samples)")
    axes[-1].set_xlabel("seconds since the run's first job started")
    return figure


def stage_times(stages: pl.DataFrame) -> Figure:
    """Per stage: its span next to its job-seconds, with the jobs' start-up added to the latter."""
    figure = Figure(figsize=(WIDTH, 1.5 + 0.45 * stages.height), layout="constrained")
    axis = figure.subplots()
    rows = np.arange(stages.height)
    span, work = stages["span_seconds"].to_numpy(), stages["job_seconds"].to_numpy()
    startup = stages["startup_seconds"].fill_null(0).to_numpy()
    axis.barh(rows - 0.2, span, height=0.4, color="C0", label="span (first start to last end)")
    axis.barh(rows + 0.2, work, height=0.4, color="C1", label="job-seconds (sum of the jobs' run times)")
    axis.barh(rows + 0.2, startup, left=work, height=0.4, color="C1", alpha=0.35,
              label="start-up job-seconds (interpreter, imports)")
    for row, (s, w, u) in enumerate(zip(span, work, startup)):
        axis.text(s, row - 0.2, f" {s:,.1f}", va="center", fontsize=8)
        axis.text(w + u, row + 0.2, f" {w:,.1f} + {u:,.1f}", va="center", fontsize=8)
    axis.set_yticks(rows, stages["stage"].to_list())
    axis.invert_yaxis()
    axis.set_xlabel("seconds")
    axis.set_title("Time per stage")
    axis.legend(fontsize=8, loc="lower right")
    axis.grid(axis="x", alpha=0.3)
    return figure


def embedding_throughput(jobs: pl.DataFrame, batches: pl.DataFrame) -> Figure:
    """Tokens per device-second of each batch (or group of batches, in long jobs) at its end."""
    colours = _stage_colours(jobs)
    batches = (batches.join(jobs.select("job", "stage"), on="job")
               .filter(pl.col("compute_seconds") > 0).sort("job", "end"))
    if batches.height == 0:
        return _no_data("no embedding batches in this run")
    figure = Figure(figsize=(WIDTH, 4.5), layout="constrained")
    origin = jobs["process_start"].min()
    axis = figure.subplots()
    for (job, stage), job_batches in batches.group_by("job", "stage", maintain_order=True):
        axis.plot(_seconds_since(job_batches["end"], origin),
                  (job_batches["tokens"] / job_batches["compute_seconds"]).to_numpy(), marker=".", linewidth=0.8,
                  color=colours[stage])
    axis.legend(handles=[Patch(color=colours[s], label=s) for s in batches["stage"].unique(maintain_order=True)],
                fontsize=8)
    axis.set_xlabel("seconds since the run's first job started")
    axis.set_ylabel("tokens per device-second")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.set_title("Embedding throughput per batch (one line per job)")
    return figure


def calls_per_sample(samples: list[str], counts: list[dict[str, int]]) -> Figure:
    """A bar per sample: its reads called virus, others, and not classified by reason."""
    calls = ["virus", "provirus", "others"]
    kinds = calls + sorted({key for count in counts for key in count} - set(calls))
    colours = {"virus": "C3", "provirus": "C1", "others": "C0"}
    figure = Figure(figsize=(WIDTH, 2.2 + 0.5 * len(samples)), layout="constrained")
    axis = figure.subplots()
    left = np.zeros(len(samples))
    for index, kind in enumerate(kinds):
        values = np.array([count.get(kind, 0) for count in counts], dtype=float)
        axis.barh(samples, values, left=left, label=kind.replace("unclassified_", "not classified: "),
                  color=colours.get(kind, f"0.{8 - index % 6}"))
        for row, (start, value) in enumerate(zip(left, values)):
            if value:
                axis.text(start + value / 2, row, f"{value:,.0f}", ha="center", va="center", fontsize=8)
        left += values
    axis.invert_yaxis()
    axis.set_xlabel("reads")
    axis.set_title("Calls per sample")
    figure.legend(fontsize=8, loc="outside lower center", ncols=min(len(kinds), 6))
    return figure


def score_distribution(sample: str, bins: np.ndarray, histograms: dict[tuple[str, str], np.ndarray]) -> Figure:
    """Histograms of the reads' highest virus and highest others scores, by call.

    `histograms[(score, call)]` holds the counts over `bins` for score "score_virus" or
    "score_others" and call "virus", "provirus" or "others"."""
    figure = Figure(figsize=(WIDTH, 3.8), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for axis, score, title in zip(axes, ("score_virus", "score_others"),
                                  ("highest virus score of the read", "highest others score of the read")):
        bottom = np.zeros(len(bins) - 1)
        for call, colour in (("virus", "C3"), ("provirus", "C1"), ("others", "C0")):
            counts = histograms[(score, call)]
            axis.bar(bins[:-1], counts, width=np.diff(bins), bottom=bottom, align="edge", color=colour,
                     label=f"called {call}")
            bottom += counts
        axis.set_xlabel(title)
        axis.set_xlim(0, 1)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("reads")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{sample}: score distributions of the classified reads")
    return figure


def score_tracks(sample: str, tracks: dict[str, dict]) -> Figure:
    """Per sequence, the highest virus score of each classified chunk along it, its viral regions
    shaded. `tracks[sequence id]` has `length`, `chunks` [(start, end, score, viral)] and
    `regions` [(start, end)], 1-based and inclusive. Viral chunks are red, the others blue."""
    if not tracks:
        return _no_data(f"{sample}: no sequence of several chunks with a viral region")
    figure = Figure(figsize=(WIDTH, 0.6 + 1.5 * len(tracks)), layout="constrained")
    axes = np.atleast_1d(figure.subplots(len(tracks), 1, squeeze=False)[:, 0])
    for axis, (sequence_id, track) in zip(axes, tracks.items()):
        for start, end in track["regions"]:
            axis.axvspan(start, end, color="C3", alpha=0.15, linewidth=0)
        for start, end, score, viral in track["chunks"]:
            axis.plot([start, end], [score, score], color="C3" if viral else "C0", linewidth=1.5)
        axis.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)
        axis.set(xlim=(1, track["length"]), ylim=(0, 1.02), ylabel="virus score")
        axis.set_title(f"{sequence_id} ({track['length']:,} bases, {len(track['regions'])} viral regions)",
                       fontsize=9, loc="left")
    axes[-1].set_xlabel("position on the sequence (each chunk a bar at its highest virus score, red if viral; "
                        "viral regions shaded)")
    figure.suptitle(f"{sample}: score tracks of the longest sequences with viral regions")
    return figure
