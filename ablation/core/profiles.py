"""Profiles: the same study at several sizes (how each shrinks a config: epochs, patience, data).

`full` is the recipe exactly; `quick`, `miniature` and `smoke` shrink it, and what they change besides
the epochs is docs/recipe.md#profiles.
"""

import dataclasses
import math
from dataclasses import dataclass

from ablation.core.config import Config, StudyError


@dataclass(frozen=True)
class Profile:
    """How a study is shrunk: epochs (and epoch-counted patience) scaled, data subsetted."""

    name: str
    epoch_scale: float
    train_subset: int | None
    test_subset: int | None
    description: str
    max_epochs: int | None = None  # a cap on every epoch budget after scaling
    run_eagerly: bool = False
    # The BatchNormalization statistics a shrunk profile evaluates with, where the config keeps the
    # recipe's moving ones: on a few thousand images they lag (docs/recipe.md#batchnorm-statistics).
    bn_statistics: str | None = None

    def apply(self, config: Config) -> Config:
        """The config as this profile runs it."""
        if self.epoch_scale == 1.0 and self.train_subset is None and self.test_subset is None:
            return config
        scale = lambda n: max(1, math.ceil(n * self.epoch_scale))  # noqa: E731
        # Patience shrinks with the epochs, but not below 5 (or the recipe's own value): on a few
        # hundred validation images an epoch's numbers swing by more than a shrunk run gains per
        # epoch, and patiences of 1-2 fire on that noise (docs/recipe.md, the patience floor).
        patience = lambda n: max(min(n, MIN_SCALED_PATIENCE), scale(n))  # noqa: E731
        stopping, lowering = patience(config.early_stopping_patience), patience(config.reduce_lr_patience)
        if (config.early_stopping_monitor and config.reduce_lr_monitor
                and config.reduce_lr_patience < config.early_stopping_patience and lowering >= stopping):
            # The floor must not undo the recipe's order (the LR drops before training stops), or the
            # step would stop in the very epoch its rate would fall: keep the recipe's ratio instead.
            lowering = max(1, min(stopping - 1, math.ceil(stopping * config.reduce_lr_patience / config.early_stopping_patience)))
        epochs = min(scale(config.epochs), self.max_epochs or config.epochs)
        return dataclasses.replace(
            config,
            epochs=epochs,
            run_eagerly=config.run_eagerly or self.run_eagerly,
            early_stopping_patience=stopping,
            reduce_lr_patience=lowering,
            lr_schedule=tuple((scale(epoch), mult) for epoch, mult in config.lr_schedule),
            warmup_epochs=min(scale(config.warmup_epochs), epochs - 1) if config.warmup_epochs else 0,  # shorter than the budget
            train_subset=_smaller(config.train_subset, self.train_subset),
            test_subset=_smaller(config.test_subset, self.test_subset),
            bn_statistics=self.bn_statistics if self.bn_statistics and config.bn_statistics == "moving"
            else config.bn_statistics,
        )


MIN_SCALED_PATIENCE = 5  # epochs


def _smaller(a, b):
    return b if a is None else a if b is None else min(a, b)


PROFILES = {
    "full": Profile("full", 1.0, None, None, "the recipe exactly: all 50,000 images, every epoch (for a GPU)"),
    "quick": Profile(
        "quick", 0.2, 4000, 2000,
        "a faithful miniature: 1/5 of every epoch budget (patience too, but at least 5), 4,000 training and 2,000 test images",
        bn_statistics="recomputed",
    ),
    # The recipe's own epochs and patiences, so early stopping and LR drops happen where the recipe
    # has them, on fewer images: the alternative to quick, at 1.8x its CPU a seed (docs/results.md: quick detects less per CPU-hour).
    "miniature": Profile(
        "miniature", 1.0, 1250, 2000,
        "the recipe's epochs and patiences, 1,250 training (1,000 train / 250 validation) and 2,000 test images",
        bn_statistics="recomputed",
    ),
    # Tracing a deep network's graph costs more CPU than a few eager batches: smoke runs eagerly.
    "smoke": Profile(
        "smoke", 0.04, 160, 100,
        "seconds: 1/25 of every epoch budget (1 or 2 epochs), 160 training and 100 test images, eager (tests)",
        max_epochs=2, run_eagerly=True, bn_statistics="recomputed",
    ),
}


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise StudyError(f"unknown profile {name!r}; allowed: {', '.join(PROFILES)}")
    return PROFILES[name]
