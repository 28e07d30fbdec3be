"""Every bad input, broken store and fault the tracker must survive, run as a real command; counts tracebacks.

    python tests/probe_errors.py [--fast] [--data PATH] [--only NAME,NAME]

Each case prepares its own temporary folder (a study file, a store, a data tree), runs
`python -m ablation.ladder` or `python -m ablation.search` on it at smoke size, and checks: no Python
traceback and no native crash in the output; the exit code expected; for an input error (exit 2)
exactly one line on stderr, `error: ...`, holding the case's words (the file or option, the key, what
is allowed), and the case's folder left exactly as it was (nothing written). The last line is
"tracebacks: N of M cases". `--fast` leaves out the cases that train (a diverging step, signals
mid-epoch, a kill and resume). The tests run every case (tests/test_errors.py).
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from conftest import TINY_VGG, tiny_study_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar-10-python.tar.gz"
SMOKE_SEARCH = ("--profile", "smoke", "--data", "{data}")
SMOKE = (*SMOKE_SEARCH, "--no-report")


def tiny_vgg(steps: str, epochs: int) -> str:
    """The fault cases' study: the tests' tiny study (conftest) on its VGG network, not cumulative, `epochs` epochs.

    A network of a few thousand weights on 80 images: the cases that train take seconds of CPU each."""
    return tiny_study_text(steps, network=TINY_VGG, study={"cumulative": False}, epochs=epochs)


TINY_RUN = ("--study", "{folder}/tiny.toml", "--profile", "full", "--no-report", "--data", "{data}")
VALID_STUDY = (REPO / "studies" / "assignment.toml").read_text()


@dataclass(frozen=True)
class Case:
    """One invocation that must end cleanly: its arguments, the exit code and the words its error must hold."""

    name: str
    args: tuple  # "{folder}" (the case's folder) and "{data}" (CIFAR-10) are filled in
    command: str = "ladder"
    exit_code: int = 2
    needles: tuple = ()
    prepare: Callable[[Path, Path], None] = lambda folder, data: None  # writes what the case needs
    store: str = "sqlite:///{folder}/store/mlflow.db"  # MLFLOW_TRACKING_URI
    unprivileged: bool = False  # file modes must apply: run without root's permission override
    stop: tuple | None = None  # (signal, output line that triggers it, seconds after that line)
    again: bool = False  # after the signal, run the same command again: that run's outcome counts
    trains: bool = False


@dataclass
class Outcome:
    exit_code: int | None
    output: str  # stdout and stderr of every invocation of the case
    stderr: str  # of the last invocation
    problems: list = field(default_factory=list)

    @property
    def traceback(self) -> bool:
        """A Python traceback, a native abort, or death by a signal the command should have handled."""
        return ("Traceback (most recent call last)" in self.output or "Check failed" in self.output
                or self.exit_code is None or self.exit_code < 0 or self.exit_code == 134)


# --- what the cases write ---------------------------------------------------------------------------


def study(text: str | bytes, name: str = "study.toml"):
    """A case that writes a study file."""
    def prepare(folder: Path, data: Path):
        (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return prepare


def with_valid(replace: str, by: str):
    return study(VALID_STUDY.replace(replace, by, 1))


def store_under_a_file(folder: Path, data: Path):
    (folder / "store").write_text("a file where the store's folder should be\n")


def read_only_folder(folder: Path, data: Path):
    (folder / "store").mkdir()
    (folder / "store").chmod(0o555)


def read_only_database(folder: Path, data: Path):
    (folder / "store").mkdir()
    sqlite_database(folder / "store" / "mlflow.db")
    (folder / "store" / "mlflow.db").chmod(0o444)


def sqlite_database(path: Path):
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE note (text)")


def corrupt_database(folder: Path, data: Path):
    (folder / "store").mkdir()
    (folder / "store" / "mlflow.db").write_bytes(b"SQLite format 3\x00" + os.urandom(4096))


def database_is_a_folder(folder: Path, data: Path):
    (folder / "store" / "mlflow.db").mkdir(parents=True)


def image_tree_lacking_a_test_class(folder: Path, data: Path):
    from PIL import Image

    for split in ("train", "test"):
        for label, name in enumerate(("airplane", "automobile", "bird")):
            if split == "test" and name == "bird":
                continue
            (folder / "tree" / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32), (label * 80, 0, 0)).save(folder / "tree" / split / name / "0.png")


def truncated_archive(folder: Path, data: Path):
    with open(data, "rb") as source:
        (folder / "cifar-10-python.tar.gz").write_bytes(source.read(2_000_000))


def corrupt_journal(folder: Path, data: Path):
    (folder / "search.journal").write_bytes(b"not json\n{\"op_code\": 0}\n")


def free_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny(steps: str, epochs: int = 3):
    return study(tiny_vgg(steps, epochs), "tiny.toml")


# --- the cases -------------------------------------------------------------------------------------

ON_STUDY = ("--study", "{folder}/study.toml", *SMOKE)
CASES = [
    # Malformed study files.
    Case("study_non_utf8", ON_STUDY, needles=("study.toml", "not UTF-8"), prepare=study(b'[study]\nname = "caf\xe9"\n')),
    Case("study_steps_as_a_table", ON_STUDY, needles=("study.toml", "steps must be an array of tables"),
         prepare=study('[study]\nname = "x"\n[base]\n[steps]\nname = "a"\n')),
    Case("study_steps_as_numbers", ON_STUDY, needles=("study.toml", "steps must be an array of tables"),
         prepare=study('steps = [1, 2]\n[study]\nname = "x"\n[base]\n')),
    Case("study_search_params_a_number", ON_STUDY, needles=("study.toml", "[search] params", "5"),
         prepare=study('[study]\nname = "x"\n[base]\n[[steps]]\nname = "a"\n[search]\nparams = 5\n')),
    Case("study_name_a_number", ON_STUDY, needles=("study.toml", "[study] name", "got 5"),
         prepare=with_valid('name = "assignment"', "name = 5")),
    Case("study_name_empty", ON_STUDY, needles=("study.toml", "[study] name", "got ''"),
         prepare=with_valid('name = "assignment"', 'name = ""')),
    Case("study_name_leaving_reports", ON_STUDY, needles=("study.toml", "[study] name", "../../x"),
         prepare=with_valid('name = "assignment"', 'name = "../../x"')),
    Case("study_infinite_learning_rate", ON_STUDY, needles=("study.toml", "[base]", "learning_rate", "inf"),
         prepare=with_valid("learning_rate = 1e-3", "learning_rate = inf")),
    Case("study_zero_learning_rate", ON_STUDY, needles=("study.toml", "learning_rate", "> 0"),
         prepare=with_valid("learning_rate = 1e-3", "learning_rate = 0")),
    Case("study_dropout_above_one", ON_STUDY, needles=("study.toml", "deeper_dropout", "dropout_rate", "[0, 1)"),
         prepare=with_valid("dropout_rate = 0.5 }", "dropout_rate = 1.5 }")),
    Case("study_negative_blocks", ON_STUDY, needles=("study.toml", "stage2_blocks", "0..21", "-3"),
         prepare=with_valid("stage2_blocks = 5,", "stage2_blocks = -3,")),
    Case("study_missing_base", ON_STUDY, needles=("study.toml", "[base]"),
         prepare=study('[study]\nname = "x"\n[[steps]]\nname = "a"\n')),
    Case("study_cumulative_a_string", ON_STUDY, needles=("study.toml", "cumulative", "true or false", "'false'"),
         prepare=with_valid('name = "assignment"', 'name = "assignment"\ncumulative = "false"')),
    Case("study_reported_accuracy_true", ON_STUDY, needles=("study.toml", "reported_test_accuracy", "True"),
         prepare=with_valid("reported_test_accuracy = 0.723", "reported_test_accuracy = true")),
    # Command-line values.
    Case("cli_negative_seed", ("--seed", "-1", *SMOKE), needles=("--seed", "0..4294967295")),
    Case("cli_zero_seeds", ("--seeds", "0", *SMOKE), needles=("--seeds", "1 to 1000")),
    Case("cli_unknown_step", ("--steps", "template,nope", *SMOKE), needles=("nope", "template")),
    Case("cli_zero_trials", ("--trials", "0", *SMOKE_SEARCH), command="search", needles=("--trials", "positive")),
    Case("cli_nan_timeout", ("--timeout", "nan", *SMOKE_SEARCH), command="search", needles=("--timeout", "finite")),
    Case("cli_study_name_leaving_reports", ("--study-name", "../../x", *SMOKE_SEARCH), command="search",
         needles=("--study-name", "../../x")),
    # Data sources.
    Case("data_missing", ("--profile", "smoke", "--data", "{folder}/nowhere.tar.gz"), needles=("not found", "nowhere")),
    Case("data_truncated_archive", ("--profile", "smoke", "--data", "{folder}/cifar-10-python.tar.gz"),
         needles=("cifar-10-python.tar.gz", "truncated"), prepare=truncated_archive),
    Case("data_test_split_lacks_a_class", ("--profile", "smoke", "--data", "{folder}/tree"),
         needles=("test", "bird"), prepare=image_tree_lacking_a_test_class),
    # Broken tracking stores.
    Case("store_under_a_file", SMOKE, needles=("store", "is a file, not a folder"), prepare=store_under_a_file),
    Case("store_folder_not_writable", SMOKE, needles=("store", "cannot write"), prepare=read_only_folder,
         unprivileged=True),
    Case("store_database_read_only", SMOKE, needles=("mlflow.db", "not writable"), prepare=read_only_database,
         unprivileged=True),
    Case("store_database_corrupt", SMOKE, needles=("mlflow.db", "cannot be used"), prepare=corrupt_database),
    Case("store_database_a_folder", SMOKE, needles=("mlflow.db", "not a file"), prepare=database_is_a_folder),
    Case("store_unknown_scheme", SMOKE, needles=("MLFLOW_TRACKING_URI", "foo", "sqlite:///"), store="foo://bar"),
    Case("store_folder_store", SMOKE, needles=("MLFLOW_TRACKING_URI", "folder store"), store="file://{folder}/mlruns"),
    Case("store_server_unreachable", SMOKE, needles=("cannot reach the tracking server", "MLFLOW_TRACKING_URI"),
         store="http://127.0.0.1:{port}"),
    Case("store_database_unreachable", SMOKE, needles=("cannot open the tracking store", "postgresql"),
         store="postgresql://user:secret@127.0.0.1:{port}/mlflow"),
    # Broken Optuna storages.
    Case("store_report_database_corrupt", ("--no-log",), command="report", needles=("mlflow.db", "cannot be used"),
         prepare=corrupt_database),
    Case("store_report_unknown_scheme", ("--no-log",), command="report", needles=("MLFLOW_TRACKING_URI", "foo"),
         store="foo://bar"),
    Case("storage_under_a_file", ("--storage", "{folder}/store/search.journal", *SMOKE_SEARCH), command="search",
         needles=("Optuna storage", "is a file, not a folder"), prepare=store_under_a_file,
         store="sqlite:///{folder}/other/mlflow.db"),
    Case("storage_unknown_scheme", ("--storage", "foo://x", *SMOKE_SEARCH), command="search",
         needles=("--storage", "unknown scheme")),
    Case("storage_corrupt_journal", ("--storage", "{folder}/search.journal", *SMOKE_SEARCH), command="search",
         needles=("search.journal", "Optuna journal"), prepare=corrupt_journal),
    # Faults while training.
    Case("diverging_step", TINY_RUN, exit_code=1, needles=("diverging", "FAILED", "diverged", "after"), trains=True,
         prepare=tiny('[[steps]]\nname = "diverging"\noptimizer = "sgd"\nlearning_rate = 1e12\n'
                      '[[steps]]\nname = "after"\n', epochs=1)),
    Case("sigterm_mid_epoch", TINY_RUN, exit_code=143, needles=("SIGTERM", "same command again"), trains=True,
         prepare=tiny('[[steps]]\nname = "only"\n'), stop=(signal.SIGTERM, "epoch   1/3", 0.3)),
    Case("sigint_mid_epoch", TINY_RUN, exit_code=130, needles=("SIGINT", "same command again"), trains=True,
         prepare=tiny('[[steps]]\nname = "only"\n'), stop=(signal.SIGINT, "epoch   1/3", 0.3)),
    Case("sigkill_then_resume", TINY_RUN, exit_code=0, needles=("resuming from the checkpoint after epoch",), trains=True,
         prepare=tiny('[[steps]]\nname = "only"\n'), stop=(signal.SIGKILL, "epoch   1/3", 0.3), again=True),
]


# --- running a case --------------------------------------------------------------------------------


def unprivileged_prefix() -> list[str] | None:
    """What runs a command without root's permission override ([] when not root; None when impossible)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if shutil.which("setpriv") else None


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its size and modification time, and every folder: what a run must not change.

    A folder's own time is left out: a store check makes and removes a probe file in it.
    """
    return {str(p.relative_to(folder)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def invoke(case: Case, folder: Path, data: Path, prefix: list[str]) -> tuple[int | None, str, str]:
    """Run the case's command once (sending its signal when the trigger line shows); (exit code, stdout, stderr)."""
    fill = {"folder": str(folder), "data": str(data), "port": str(free_port())}
    env = {**os.environ, "MLFLOW_TRACKING_URI": case.store.format(**fill), "PYTHONUNBUFFERED": "1",
           "ABLATION_CACHE": str(folder.parent / "cache")}
    command = [*prefix, sys.executable, "-m", f"ablation.{case.command}", *(a.format(**fill) for a in case.args)]
    process = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = []
    if case.stop is not None:
        signum, trigger, delay = case.stop
        for line in process.stdout:
            seen.append(line)
            if trigger in line:
                time.sleep(delay)
                process.send_signal(signum)
                break
    try:
        stdout, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        return None, "".join(seen) + stdout, stderr + "\n(timed out after 600 s)"
    return process.returncode, "".join(seen) + stdout, stderr


def run_case(case: Case, root: Path, data: Path) -> Outcome | None:
    """Prepare, run and judge one case in a fresh folder under `root`; None when it cannot run here."""
    prefix = unprivileged_prefix() if case.unprivileged else []
    if prefix is None:
        return None
    folder = root / case.name
    folder.mkdir(parents=True)
    case.prepare(folder, data)
    before = snapshot(folder)
    code, stdout, stderr = invoke(case, folder, data, prefix)
    output = stdout + stderr
    if case.again:
        code, stdout, stderr = invoke(replace(case, stop=None), folder, data, prefix)
        output += stdout + stderr
    outcome = Outcome(code, output, stderr)
    judge(case, outcome, before == snapshot(folder))
    return outcome


def judge(case: Case, outcome: Outcome, untouched: bool):
    """Fill `outcome.problems` with what the case got wrong."""
    if outcome.traceback:
        outcome.problems.append("a traceback or a crash")
    if outcome.exit_code != case.exit_code:
        outcome.problems.append(f"exit code {outcome.exit_code}, expected {case.exit_code}")
    if case.exit_code == 2:
        lines = [line for line in outcome.stderr.splitlines() if line.strip()]
        if len(lines) != 1 or not lines[0].startswith("error: "):
            outcome.problems.append(f"{len(lines)} stderr lines, expected one 'error: ...' line")
        if not untouched:
            outcome.problems.append("its folder changed: an input error wrote something")
    text = outcome.stderr if case.exit_code == 2 else outcome.output
    missing = [needle for needle in case.needles if needle not in text]
    if missing:
        outcome.problems.append(f"the message lacks {missing}")


def error_line(outcome: Outcome) -> str:
    lines = [line for line in outcome.stderr.splitlines() if line.startswith("error: ") or "interrupted by" in line]
    return (lines[-1] if lines else "")[:160]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="leave out the cases that train")
    parser.add_argument("--data", default=os.environ.get("ABLATION_DATA", str(DEFAULT_DATA)))
    parser.add_argument("--only", default=None, help="comma-separated case names")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if not (args.fast and c.trains) and (not args.only or c.name in args.only.split(","))]
    tracebacks = wrong = 0
    with tempfile.TemporaryDirectory(prefix="probe-errors-") as root:
        for case in cases:
            started = time.perf_counter()
            outcome = run_case(case, Path(root), Path(args.data))
            if outcome is None:
                print(f"{case.name:<34} skipped: cannot drop root's permission override here (no setpriv)")
                continue
            tracebacks += outcome.traceback
            wrong += bool(outcome.problems)
            verdict = "ok" if not outcome.problems else "WRONG: " + "; ".join(outcome.problems)
            print(f"{case.name:<34} exit {outcome.exit_code!s:>4}  {time.perf_counter() - started:5.1f} s  {verdict}\n"
                  f"{'':<34} {error_line(outcome)}", flush=True)
    print(f"wrong: {wrong} of {len(cases)} cases")
    print(f"tracebacks: {tracebacks} of {len(cases)} cases")
    return 1 if tracebacks or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
