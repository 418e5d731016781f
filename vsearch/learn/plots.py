"""Plots. Each function returns a matplotlib Figure; callers save it. Nothing calls show().

Figures are made without pyplot, so nothing is kept in a global figure registry (no leaks
in loops, no backend needed on a server); in a notebook a returned Figure still displays.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

SAME, DIFFERENT = "#2e7d32", "#c62828"


def _subplots(nrows: int = 1, ncols: int = 1, figsize=(6, 4), squeeze: bool = True):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def training_curves(history: dict[str, list[float]], phase_starts: Sequence[int] = ()) -> Figure:
    """Loss and accuracy per epoch, train and validation, with phase boundaries marked."""
    fig, axes = _subplots(1, 2, figsize=(10, 3.8))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for name, style in ((key, "-"), (f"val_{key}", "--")):
            if name in history:
                values = history[name]
                ax.plot(np.arange(1, len(values) + 1), values, style, marker="o", ms=3, label=name)
        for start in phase_starts:
            ax.axvline(start + 0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def class_balance(counts: dict[str, dict[str, int]], title: str = "images per class") -> Figure:
    """Grouped bars: images per class for each split (``{split: {class: n}}``)."""
    splits = list(counts)
    classes = list(next(iter(counts.values())))
    fig, ax = _subplots(figsize=(1.2 + 0.9 * len(classes), 3.2))
    width = 0.8 / len(splits)
    for i, split in enumerate(splits):
        ax.bar(np.arange(len(classes)) + i * width, [counts[split][c] for c in classes], width, label=split)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=30, ha="right")
    ax.set_title(title)
    ax.legend()
    return fig


def confusion_matrix(cm: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    """Row-normalised confusion matrix with counts in the cells."""
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 1.0 + 0.75 * len(class_names)
    fig, ax = _subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if norm[i, j] > 0.5 else "black",
                fontsize=8,
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title)
    return fig


def _show(ax, pixels, caption: str = "", colour: str | None = None):
    ax.imshow(np.asarray(pixels, dtype=np.uint8))
    ax.set_xticks([])
    ax.set_yticks([])
    if colour:
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(4)
    ax.set_title(caption, fontsize=8, color=colour or "black")


def retrieval(
    query, query_label: str | None, matches: Sequence, labels: Sequence[str], scores: Sequence[float], title: str = ""
) -> Figure:
    """A query beside its top-k matches, each captioned with class and similarity.

    Matches are framed green when their class equals the query's, red otherwise
    (no frame when the query's class is unknown).
    """
    return retrieval_grid([query], [query_label], [matches], [labels], [scores], title=title)


def retrieval_grid(
    queries: Sequence,
    query_labels: Sequence[str | None],
    matches: Sequence[Sequence],
    labels: Sequence[Sequence[str]],
    scores: Sequence[Sequence[float]],
    title: str = "",
    query_captions: Sequence[str] | None = None,
    relevant: Sequence[Sequence[bool]] | None = None,
) -> Figure:
    """Several queries, one row each: the query, then its matches (see :func:`retrieval`).

    ``relevant`` overrides the same-class rule for the green/red frames.
    """
    rows = len(queries)
    cols = 1 + max(len(m) for m in matches)
    fig, axes = _subplots(rows, cols, figsize=(1.9 * cols, 2.3 * rows), squeeze=False)
    for r in range(rows):
        caption = query_captions[r] if query_captions else f"query: {query_labels[r]}" if query_labels[r] else "query"
        _show(axes[r, 0], queries[r], caption, "#1565c0")
        for c in range(1, cols):
            ax = axes[r, c]
            if c - 1 >= len(matches[r]):
                ax.axis("off")
                continue
            label = labels[r][c - 1]
            colour: str | None
            if relevant is not None:
                colour = SAME if relevant[r][c - 1] else DIFFERENT
            else:
                colour = None if query_labels[r] is None else (SAME if label == query_labels[r] else DIFFERENT)
            _show(ax, matches[r][c - 1], f"#{c} {label}\nsim {scores[r][c - 1]:.3f}", colour)
    if title:
        fig.suptitle(title)
    return fig


def embedding_map(points: np.ndarray, labels: Sequence[int], class_names: Sequence[str], title: str = "") -> Figure:
    """2-D scatter of projected embeddings coloured by class."""
    fig, ax = _subplots(figsize=(7, 6))
    codes = np.asarray(labels)
    cmap = matplotlib.colormaps["tab10"]
    for index, name in enumerate(class_names):
        mask = codes == index
        ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.7, color=cmap(index % 10), label=name)
    ax.legend(markerscale=3, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return fig


def reliability_diagram(curves: dict[str, dict], title: str = "") -> Figure:
    """Reliability curves: outcome rate against mean predicted probability per bin.

    Args:
        curves: name -> :func:`vsearch.catalog.calibration.reliability` output (``edges``, ``count``,
            ``confidence``, ``frequency``; empty bins hold None).
    A calibrated probability lies on the diagonal; below the numbers claim too much.
    Under it, how many samples fell in each bin.
    """
    fig = Figure(figsize=(5.5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="calibrated")
    cmap = matplotlib.colormaps["tab10"]
    width = 0.8 / max(len(curves), 1)
    for n, (name, curve) in enumerate(curves.items()):
        filled = [i for i, c in enumerate(curve["count"]) if c]
        top.plot(
            [curve["confidence"][i] for i in filled],
            [curve["frequency"][i] for i in filled],
            marker="o",
            ms=4,
            color=cmap(n % 10),
            label=name,
        )
        edges = np.asarray(curve["edges"])
        bin_width = edges[1:] - edges[:-1]
        bottom.bar(
            edges[:-1] + bin_width * (0.1 + n * width),
            curve["count"],
            bin_width * width,
            align="edge",
            color=cmap(n % 10),
        )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("observed rate")
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
    bottom.set_yscale("log")
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("samples")
    if title:
        top.set_title(title)
    return fig
