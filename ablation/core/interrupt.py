"""Stopping on a signal without breaking what runs: the signal handler only records the request.

An exception raised from a Python signal handler lands wherever the interpreter happens to be,
including inside TensorFlow's calls back into Python, where it can abort the whole process
natively ("Check failed: !PyErr_Occurred()", exit 134) and leave its runs RUNNING. So within
`stop_on_signals` SIGTERM and SIGINT only set a flag; training checks it at every batch end and
the runner between units (`check`), and `Interrupted` is raised there, from ordinary Python code.
A second Ctrl-C raises at once (Python's usual KeyboardInterrupt), for a user who will not wait.
Within `raising` (building a network: Python, no batch ends) a stop request raises at once.
"""

import contextlib
import os
import signal

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: list[int] = []  # the signal that asked for a stop, once one has
_raising: list[bool] = []  # non-empty inside `raising`: a stop request raises at once


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal, raised where it is safe; `signum` says which signal."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def check():
    """Raise Interrupted if a signal has asked for a stop."""
    if _requested:
        raise Interrupted(_requested[0])


def _handler(signum, frame):
    if _requested and signum == signal.SIGINT:
        raise KeyboardInterrupt  # Ctrl-C twice: the user wants out now, whatever it costs
    if not _requested:
        _requested.append(signum)
        # os.write, not print: a handler may run inside a print, and buffered streams are not reentrant.
        again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
        os.write(2, f"\n{signal.Signals(signum).name}: stopping at the next batch end{again}\n".encode())
    if _raising:
        raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals():
    """Within it, SIGTERM and SIGINT ask for a stop that `check` raises; the handlers before are restored after."""
    previous = {signum: signal.signal(signum, _handler) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _requested.clear()


@contextlib.contextmanager
def raising():
    """Within it, a stop request raises Interrupted at once: for long pure-Python work with no batch end.

    Building a network is such work (a deep one takes minutes); it runs Python and Keras' graph
    bookkeeping, not TensorFlow's kernels, so raising from the handler is safe there.
    """
    check()
    _raising.append(True)
    try:
        yield
    finally:
        _raising.pop()
    check()  # a raise that landed where Python ignores exceptions (a __del__, a gc callback) stops here
