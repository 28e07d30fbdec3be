"""The Python API (ablation/api.py): docs/api.md's examples run as written, `import ablation` stays light, options
are checked by the commands' parsers, and Ctrl-C in a caller's process stops as a command does and gives the
caller its own handler back.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ablation.tracking import Kind, Tag
from probe_errors import tiny_vgg
from test_resilience import stop_at

REPO = Path(__file__).resolve().parents[1]
DATA_LINE = 'DATA = "cifar-10-python.tar.gz"'


def python(code: str, folder: Path, background: bool = False):
    """`python -c CODE` in `folder`, on the MLflow store in that folder: finished, or started (output on stdout)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", code]
    if background:
        return subprocess.Popen(command, cwd=folder, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    return subprocess.run(command, cwd=folder, env=env, text=True, capture_output=True, timeout=900)


def test_import_ablation_loads_no_engine_until_a_function_is_used(tmp_path):
    done = python("import sys; import ablation; from ablation import run_ladder, results, Results, load_study; "
                  "print(sorted(m for m in ('tensorflow', 'keras', 'mlflow', 'optuna') if m in sys.modules)); "
                  "print(load_study('assignment').name)", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "assignment"]


def test_a_bad_option_is_a_value_error_with_the_commands_message(tmp_path):
    done = python("from ablation import run_ladder\n"
                  "for options in ({'profile': 'fast'}, {'seeds': 0}, {'overrides': {'epochs': -1}}):\n"
                  "    try:\n"
                  "        run_ladder('assignment', **options)\n"
                  "    except ValueError as error:\n"
                  "        print(type(error).__name__, error)\n", tmp_path)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 3, done.stdout + done.stderr
    assert lines[0].startswith("ValueError") and "--profile" in lines[0] and "fast" in lines[0]
    assert lines[1].startswith("ValueError") and "--seeds" in lines[1]
    assert lines[2].startswith("StudyError --set: step 'template': epochs")  # checked as a study file is (a ValueError)
    assert not (tmp_path / "mlflow.db").exists()  # nothing ran


@pytest.mark.slow
def test_the_examples_of_docs_api_md_run_as_written(tmp_path, cifar_path):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.S)
    code = "\n".join(blocks)
    assert len(blocks) >= 5 and DATA_LINE in code
    done = python(code.replace(DATA_LINE, f"DATA = {str(cifar_path)!r}"), tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "[('plain', False), ('flip', True)]" in output
    assert re.search(r"flip\s+plain\s+3 .*(helped|hurt|equivalent|undecided)", output), output[-4000:]
    assert "--profile" in done.stdout.splitlines()[-1]  # the last example's ValueError
    assert (tmp_path / "reports" / "flip_study" / "report.html").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("flip_study").experiment_id])
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert len([run for run in runs if run.data.tags.get(Tag.KIND) == Kind.LADDER_STEP]) == 6  # 2 steps x 3 seeds


INTERRUPTED = """
import signal
from ablation import run_ladder

def mine(signum, frame):
    print("the caller's handler")

signal.signal(signal.SIGINT, mine)
try:
    run_ladder("tiny.toml", profile="full", data={data!r}, report=False)
except KeyboardInterrupt as stop:
    print("KeyboardInterrupt:", stop, "| handler restored:", signal.getsignal(signal.SIGINT) is mine)
"""


@pytest.mark.slow
def test_ctrl_c_kills_the_running_step_keeps_its_checkpoint_and_restores_the_callers_handler(tmp_path, cifar_tree):
    (tmp_path / "tiny.toml").write_text(tiny_vgg('[[steps]]\nname = "only"\n', epochs=4))
    process = python(INTERRUPTED.format(data=str(cifar_tree)), tmp_path, background=True)
    output = stop_at(process, "epoch   1/4", signal.SIGINT, 0.0)
    assert process.returncode == 0, output[-3000:]
    assert "KeyboardInterrupt: stopped by SIGINT | handler restored: True" in output, output[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert {(run.data.tags.get(Tag.KIND), run.info.status) for run in runs} == {
        (Kind.LADDER, "KILLED"), (Kind.LADDER_STEP, "KILLED")}, output[-3000:]
    assert list((tmp_path / "checkpoints").glob("*/latest")), output[-3000:]
