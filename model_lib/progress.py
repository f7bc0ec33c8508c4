"""Training progress: a tqdm bar per epoch plus one log line per epoch."""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm


class TrainingProgress:
    """Callable passed as `on_progress` to `training.train`."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, on_epoch=None):
        self.logger = logger
        self.on_epoch = on_epoch  # e.g. log the epoch's metrics to MLflow
        self.bar = None

    def __call__(self, event: dict) -> None:
        if event.get("epoch_done"):
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            self.logger.info(
                "epoch %d: train_loss=%.4f train_acc=%.4f val_loss=%.4f val_acc=%.4f "
                "(%.0f img/s, %.0f s)",
                event["epoch"],
                event["train_loss"],
                event["train_accuracy"],
                event["val_loss"],
                event["val_accuracy"],
                event["images_per_second"],
                event["seconds"],
            )
            if self.on_epoch:
                self.on_epoch(event)
            return
        if self.bar is None:
            self.bar = tqdm(
                total=event["total"],
                desc=f"epoch {event['epoch']}/{event['epochs']}",
                unit="batch",
                file=sys.stderr,
                # In a log file (the worker's), a redraw is a new line: draw less often.
                mininterval=2 if sys.stderr.isatty() else 15,
                dynamic_ncols=True,
            )
        # refresh=False: redraws follow mininterval, not every batch.
        self.bar.set_postfix(
            loss=f"{event['loss']:.3f}", img_s=f"{event['images_per_second']:.0f}", refresh=False
        )
        self.bar.update(1)
