"""Direct tests of the modules that need no store and no Keras: checkpoints, stop requests, the command line,
the evidence over seeds and the console."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from ablation.core import interrupt
from ablation.training import checkpoint


def _weights(path):
    path.write_bytes(b"w" * 1024)


# ---------------------------------------------------------------------------------------------
# checkpoint


def test_a_save_reads_back_with_its_history_state_and_best_weights(tmp_path):
    best = [np.arange(6.0).reshape(2, 3), np.ones(4)]
    checkpoint.write(tmp_path, 1, {"loss": [2.0]}, {"rng": [1, 2]}, _weights, None)
    saved = checkpoint.write(tmp_path, 2, {"loss": [2.0, 1.5]}, {"rng": [3, 4]}, _weights, best)
    read = checkpoint.read(tmp_path)
    assert (read.epoch, read.history, read.state["rng"]) == (2, {"loss": [2.0, 1.5]}, [3, 4])
    assert read.folder == saved.folder and read.weights_path.is_file()
    assert all(np.array_equal(a, b) for a, b in zip(read.best_weights(), best, strict=True))
    assert [p.name for p in tmp_path.glob("epoch-*")] == [saved.folder.name]  # the older save is gone


@pytest.mark.parametrize("damage", ["no latest", "latest names nothing", "state not json", "no weights"])
def test_an_unreadable_save_means_start_over(tmp_path, damage):
    saved = checkpoint.write(tmp_path, 3, {"loss": [1.0] * 3}, {}, _weights, None)
    if damage == "no latest":
        (tmp_path / checkpoint.LATEST).unlink()
    elif damage == "latest names nothing":
        (tmp_path / checkpoint.LATEST).write_text("epoch-00009-1")
    elif damage == "state not json":
        (saved.folder / checkpoint.STATE).write_text("{half")
    else:
        (saved.folder / checkpoint.WEIGHTS).unlink()
    assert checkpoint.read(tmp_path) is None


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from ablation.training import checkpoint
    root = Path(sys.argv[1])
    for epoch in range(1, 100000):
        history = {"loss": [1.0 / e for e in range(1, epoch + 1)]}
        checkpoint.write(root, epoch, history, {"epoch_seen": epoch}, lambda p: p.write_bytes(b"w" * 65536), None)
        print(epoch, flush=True)
""")


def test_sigkill_at_any_moment_leaves_a_complete_save(tmp_path):
    """A real writer killed with SIGKILL five times, at moments of its own: each time the newest save is whole."""
    epochs = []
    for kill in range(5):
        root = tmp_path / f"kill{kill}"
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True)
        for _ in range(3 + 7 * kill):  # let it save a few epochs, then kill it wherever it is
            writer.stdout.readline()
        time.sleep(0.003 * kill)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        saved = checkpoint.read(root)
        assert saved is not None and saved.weights_path.stat().st_size == 65536
        assert len(saved.history["loss"]) == saved.epoch == saved.state["epoch_seen"]
        epochs.append(saved.epoch)
    assert len(set(epochs)) >= 2, epochs  # the kills landed at different points of the writing


# ---------------------------------------------------------------------------------------------
# interrupt: real signals to this process


def test_a_signal_is_a_request_that_check_raises_and_the_old_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with interrupt.stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler has run: it only recorded the request
        with pytest.raises(interrupt.Interrupted) as stop:
            interrupt.check()
        assert stop.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    interrupt.check()  # the request ended with the block


def test_inside_raising_a_signal_stops_long_python_work_at_once():
    with interrupt.stop_on_signals():
        started = time.monotonic()
        with pytest.raises(interrupt.Interrupted):
            with interrupt.raising():
                os.kill(os.getpid(), signal.SIGTERM)
                while time.monotonic() - started < 30:  # a long build, in Python
                    sum(range(1000))
        assert time.monotonic() - started < 5


def test_a_second_ctrl_c_raises_at_once():
    with interrupt.stop_on_signals():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt) as second:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert not isinstance(second.value, interrupt.Interrupted)  # Python's own, for a user who will not wait


# ---------------------------------------------------------------------------------------------
# cli: what every command shares on the command line


def test_a_bad_option_is_one_line_naming_it_and_exits_2(capsys):
    from ablation import cli

    parser = cli.ArgumentParser(prog="python -m ablation.x")
    parser.add_argument("--timeout", type=cli.positive_seconds)
    parser.add_argument("--idle", type=cli.idle_seconds)
    parser.add_argument("--seed", type=cli.seed_value)
    for argv, needle in ((["--timeout", "0"], "seconds > 0, got '0'"), (["--timeout", "nan"], "finite"),
                         (["--idle", "-1"], "seconds >= 0, got '-1'"), (["--seed", "x\ny"], "integer")):
        with pytest.raises(SystemExit) as done:
            parser.parse_args(argv)
        message = capsys.readouterr().err
        assert done.value.code == cli.EXIT_INPUT_ERROR and message.count("\n") == 1, message
        assert argv[0] in message and needle in message, message
    assert parser.parse_args(["--idle", "0", "--timeout", "2.5"]).idle == 0.0


def test_one_line_escapes_the_line_breaks_a_value_brought():
    from ablation import cli

    assert cli.one_line("bad value 'a\nb\r\u2028c'") == "bad value 'a\\nb\\r\\u2028c'"
    assert cli.exit_code_of(interrupt.Interrupted(signal.SIGTERM)) == 143 and cli.exit_code_of(KeyboardInterrupt()) == 130



EXIT_PROGRAM = """
import atexit, sys, threading, time
from ablation import cli
folder = sys.argv[1]

class Holder:
    def __del__(self):  # a finalizer: it runs when the collector frees the cycle below
        with open(folder + "/cycle.txt", "w") as file:
            file.write("finalized")

def leave_a_cycle():
    holder = Holder()
    holder.self = holder

def later():  # a thread that is not a daemon: the process waits for it
    time.sleep(0.5)
    open(folder + "/thread.txt", "w").write("thread done")

def main():
    leave_a_cycle()
    atexit.register(lambda: open(folder + "/atexit.txt", "w").write("atexit ran"))
    threading.Thread(target=later).start()
    print("printed", end="")  # still in stdout's buffer: no newline
    return 3

cli.run_and_exit(main)
"""


def test_run_and_exit_keeps_what_a_normal_exit_does(tmp_path):
    """run_and_exit(main) ends with main's code, flushes stdout, finalizes an object left in a garbage cycle (as a
    normal exit does; frozen uncollected, it would not be), waits for a thread and runs the atexit handlers."""
    done = subprocess.run([sys.executable, "-c", EXIT_PROGRAM, str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 3 and done.stdout == "printed", done.stderr
    written = {name: (tmp_path / name).read_text() for name in ("cycle.txt", "thread.txt", "atexit.txt")}
    assert written == {"cycle.txt": "finalized", "thread.txt": "thread done", "atexit.txt": "atexit ran"}


# ---------------------------------------------------------------------------------------------
# evidence: a ladder's replicates in, steps and changes out


def _records(values: dict) -> list[dict]:
    """{(step, seed): accuracy} as the records a ladder's runs give."""
    return [{"step": step, "seed": seed, "test_accuracy": value, "best_val_accuracy": value}
            for (step, seed), value in values.items()]


def test_changes_pair_by_seed_and_count_only_the_seeds_both_steps_have():
    from ablation.analysis import evidence

    records = _records({("a", 0): 0.50, ("a", 1): 0.52, ("a", 2): 0.51, ("b", 0): 0.55, ("b", 2): 0.58})
    [change] = evidence.compare_steps(records, [("b", "a")])
    assert change.seeds == (0, 2) and change.change.n == 2
    assert change.change.mean == pytest.approx(((0.55 - 0.50) + (0.58 - 0.51)) / 2)
    [step_a, step_b] = evidence.summarize_steps(records, [("a", False), ("b", False)])
    assert (step_a.seeds, step_b.seeds) == ((0, 1, 2), (0, 2)) and step_a.test.mean == pytest.approx(0.51)


def test_a_run_without_the_compared_metric_is_not_counted():
    from ablation.analysis import evidence

    records = _records({("a", 0): 0.5, ("a", 1): 0.5, ("b", 0): 0.6, ("b", 1): 0.6})
    for record, top5 in zip(records, (0.8, None, 0.9, float("nan")), strict=True):
        record["test_top5_accuracy"] = top5
    [change] = evidence.compare_steps(records, [("b", "a")], metric="test_top5_accuracy")
    assert change.seeds == (0,) and change.change.mean == pytest.approx(0.1) and change.mcnemar is None


def test_ladder_pairs_compare_each_step_with_the_one_before_and_a_baseline_with_its_own():
    from types import SimpleNamespace

    from ablation.analysis import evidence

    def step(name, is_baseline, compare_to=None):
        return SimpleNamespace(name=name, is_baseline=is_baseline, compare_to=compare_to)

    steps = [step("t", False), step("aug", False), step("deep", False), step("vgg", True), step("resnet", True, "aug")]
    assert evidence.ladder_pairs(steps) == [("aug", "t"), ("deep", "aug"), ("vgg", "deep"), ("resnet", "aug")]


def test_a_decided_change_keeps_its_first_verdict():
    from ablation.analysis import evidence, stats

    def item(step, verdict):
        return {"step": step, "against": "a", "change": {"verdict": verdict}}

    decided = {}
    assert [i["step"] for i in evidence.still_open([item("b", stats.HELPED), item("c", stats.UNDECIDED)], decided)] == ["c"]
    assert [i["step"] for i in evidence.still_open([item("b", stats.UNDECIDED), item("c", stats.HURT)], decided)] == []
    assert decided[("b", "a")]["change"]["verdict"] == stats.HELPED  # the later look does not undo it
    assert evidence.looks(3, 8) == [3, 5, 7, 8] and evidence.looks(8, 8) == [8]


# ---------------------------------------------------------------------------------------------
# console: what a command shows


def test_in_a_pipe_a_display_prints_plain_lines_and_draws_no_bars():
    from ablation.core.console import Display

    lines = []
    with Display(live=False, out=lines.append) as display:
        display.start_overall("ladder", total=3, unit="epochs")
        with display.epoch_bar(3, 10) as (begin, batch):
            assert begin == () and batch == ()  # no hooks: nothing to draw
        display("step 1")
        display.update_overall(advance=1)
    assert lines == ["step 1"] and display.bars is None


def test_hidden_native_stderr_swallows_fd_2_and_gives_it_back():
    code = textwrap.dedent("""
        import os
        from ablation.core import console
        console.configure(verbose=False)
        with console.native_stderr_hidden():
            os.write(2, b"native chatter\\n")
        os.write(2, b"after\\n")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "after\n", done.stderr
