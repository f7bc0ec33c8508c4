"""Training plots as matplotlib figures (the caller saves or logs them).

Figures are made without pyplot, so no display backend is chosen or needed.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def loss_curve(history: list[dict]):
    """Train/val loss and accuracy per epoch, side by side."""
    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(10, 4))
    loss_axis, acc_axis = figure.subplots(1, 2)
    loss_axis.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    loss_axis.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation")
    loss_axis.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    acc_axis.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    acc_axis.plot(epochs, [h["val_accuracy"] for h in history], "o-", label="validation")
    acc_axis.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for axis in (loss_axis, acc_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def confusion_matrix_figure(matrix, class_names, title: str = "Confusion matrix (validation)"):
    figure = Figure(figsize=(4.5, 4))
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis)
    axis.set(
        xticks=range(len(class_names)),
        yticks=range(len(class_names)),
        xticklabels=class_names,
        yticklabels=class_names,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    peak = max(max(row) for row in matrix) or 1
    for row, values in enumerate(matrix):
        for col, value in enumerate(values):
            color = "white" if value > peak / 2 else "black"
            axis.text(col, row, str(value), ha="center", va="center", color=color)
    figure.tight_layout()
    return figure


def reliability_diagram(before: dict, after: dict, ece_before: float, ece_after: float):
    """Accuracy against confidence per bin (calibration.reliability), before and after
    temperature scaling; the diagonal is perfect calibration."""
    figure = Figure(figsize=(10, 4.2))
    for axis, table, ece, title in zip(
        figure.subplots(1, 2),
        (before, after),
        (ece_before, ece_after),
        ("before calibration (T = 1)", "after temperature scaling"),
        strict=True,
    ):
        bins = len(table["counts"])
        centres = (np.arange(bins) + 0.5) / bins
        filled = table["counts"] > 0
        axis.bar(
            centres[filled],
            table["accuracy"][filled],
            width=1 / bins,
            alpha=0.7,
            edgecolor="black",
            label="accuracy",
        )
        axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        axis.plot(
            table["confidence"][filled],
            table["accuracy"][filled],
            "o",
            color="C3",
            label="mean confidence",
        )
        axis.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="confidence",
            ylabel="accuracy",
            title=f"Pets, validation: {title}\nECE {ece:.2%} ({bins} bins)",
        )
        axis.legend(loc="upper left")
    figure.tight_layout()
    return figure


def score_histogram(pet_scores, other_scores, threshold: float, split: str):
    """Pet scores of pet photos and of photos that are neither, with the threshold."""
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    bins = np.linspace(0, 1, 41)
    axis.hist(pet_scores, bins=bins, alpha=0.6, label=f"pets ({len(pet_scores)})")
    axis.hist(
        other_scores, bins=bins, alpha=0.6, label=f"neither, unseen kinds ({len(other_scores)})"
    )
    axis.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axis.set(
        yscale="log",
        xlabel="pet score (calibrated P(cat) + P(dog))",
        ylabel="photos",
        title=f"Pet score, {split} split: below the threshold the answer is 'neither'",
    )
    axis.legend()
    figure.tight_layout()
    return figure


def error_grid(pixels, captions: list[str], title: str, columns: int = 6):
    """The given images (uint8 HWC) in a grid, each with its caption."""
    rows = max(1, -(-len(pixels) // columns))
    figure = Figure(figsize=(2.2 * columns, 2.5 * rows + 0.6))
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for axis in axes:
        axis.axis("off")
    for axis, image, caption in zip(axes, pixels, captions, strict=False):
        axis.imshow(image)
        axis.set_title(caption, fontsize=8)
    if not len(pixels):
        axes[0].text(0.5, 0.5, "no errors", ha="center", va="center")
    figure.suptitle(title)
    figure.tight_layout()
    return figure
