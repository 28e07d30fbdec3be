"""Every bad input and broken store, each its own test: one `error:` line naming the file or option, exit 2,
nothing written. The cases live in tests/probe_errors.py, which also runs them all and counts tracebacks."""

import subprocess
import sys

import pytest

from probe_errors import CASES, REPO, run_case, unprivileged_prefix

INPUT_ERRORS = [case for case in CASES if not case.trains]


def test_the_cases_cover_studies_options_data_stores_and_storages():
    kinds = {case.name.split("_")[0] for case in INPUT_ERRORS}
    assert kinds == {"study", "cli", "data", "store", "storage"}
    assert all(case.exit_code == 2 for case in INPUT_ERRORS)


@pytest.mark.parametrize("case", INPUT_ERRORS, ids=lambda case: case.name)
def test_input_error_is_one_line_exit_2_and_writes_nothing(case, tmp_path, cifar_path):
    if case.unprivileged and unprivileged_prefix() is None:
        pytest.skip("running as root without setpriv: file modes cannot be enforced")
    outcome = run_case(case, tmp_path, cifar_path)
    assert not outcome.traceback, outcome.output[-3000:]
    assert outcome.problems == [], outcome.stderr[-3000:]


def test_the_probe_script_prints_the_traceback_count(cifar_path):
    done = subprocess.run([sys.executable, "tests/probe_errors.py", "--data", str(cifar_path),
                           "--only", "study_missing_base,cli_negative_seed"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "tracebacks: 0 of 2 cases"
