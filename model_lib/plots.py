"""Training plots as matplotlib figures (the caller saves or logs them).

Figures are made without pyplot, so no display backend is chosen or needed.
"""

from __future__ import annotations

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
