"""What a command shows while it works: lines, live progress bars with an ETA, and no library chatter.

On a terminal a `Display` draws rich's live bars below the lines it prints: one for the whole
command (epochs of a ladder, trials of a search) and one for the running epoch (its batches), each
with the time elapsed and an ETA. In a pipe or a log file it prints the same lines and no bars, so a
log stays plain text, one line per epoch.
"""

import contextlib
import logging
import os
import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

_hide_native_stderr = False  # set by `configure`: commands hide it, a library caller sees everything


def configure(verbose: bool):
    """Hide TensorFlow's and MLflow's start-up chatter, or show all of it: call before either is imported."""
    global _hide_native_stderr
    _hide_native_stderr = not verbose
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"
        return
    # MLflow's table creation and system-metrics notes are INFO lines; a re-run's artifact copies draw bars.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # TensorFlow's Python warnings, e.g. "N out of the last M calls to ... triggered tf.function retracing"
    # once a few steps have each built their model: every step traces its own functions, by design.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@contextlib.contextmanager
def native_stderr_hidden():
    """TensorFlow's C++ lines written while it loads (CUDA probes) go nowhere, unless the command is verbose.

    They come from its logging library before TF_CPP_MIN_LOG_LEVEL applies, so only the file
    descriptor can hold them back; Python's own errors still reach stderr once the import is over.
    """
    if not _hide_native_stderr:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _columns():
    return (TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())


class Display:
    """The command's output: `say` prints a line; on a terminal, bars for the whole command and the epoch.

    `live`: None decides by stdout (a terminal that can redraw gets bars); `out` prints a plain line.
    """

    def __init__(self, live: bool | None = None, out=None):
        console = Console(highlight=False)
        self.live = console.is_interactive if live is None else live
        self.out = out or (lambda text: print(text, flush=True))  # flushed: lines show at once in a log
        self.bars = Progress(*_columns(), console=console) if self.live else None
        self.overall = None

    def __enter__(self):
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(self, *exc_info):
        if self.bars is not None:
            self.bars.stop()
        return False

    def say(self, text: str):
        """A line of output: above the bars on a terminal."""
        if self.bars is not None:
            self.bars.console.print(text, markup=False, soft_wrap=True)  # a long URL stays one line to copy
        else:
            self.out(text)

    __call__ = say  # a Display serves wherever a `say(text)` function is taken

    def start_overall(self, description: str, total: int, unit: str):
        """The whole command's bar (`total` epochs, trials, ...)."""
        if self.bars is not None:
            self.overall = self.bars.add_task(description, total=total, unit=unit)

    def update_overall(self, *, advance: float = 0, completed: float | None = None, description: str | None = None):
        if self.overall is not None:
            self.bars.update(self.overall, advance=advance, completed=completed, description=description)

    @contextlib.contextmanager
    def epoch_bar(self, epochs: int, batches: int):
        """Hooks `(epoch begin, batch end)` drawing the running epoch's batches; empty without bars.

        The bar goes when the block ends.
        """
        if self.bars is None:
            yield (), ()
            return
        task = self.bars.add_task("", total=batches, unit="batches", visible=False)

        def begin(epoch, logs):
            self.bars.reset(task, total=batches, description=f"  epoch {epoch}/{epochs}", visible=True)

        def batch(number, logs):
            self.bars.update(task, completed=number)

        try:
            yield (begin,), (batch,)
        finally:
            self.bars.remove_task(task)
