"""A model by import path (`model = "package.module:function"`): a package outside the repository, on PYTHONPATH,
trained by the ladder and by a queue worker; editing its source is new work, an unchanged rerun is reused; a path
that cannot be used is a one-line input error (exit 2)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ablation import tracking
from ablation.tracking import Tag

REPO = Path(__file__).resolve().parents[1]

MODEL = '''
import keras
from keras import layers


def small(input_shape, num_classes, *, filters=4, dense_units=8, pool="max"):
    """Conv3x3-ReLU, a 4x4 pooling, one Dense layer, softmax."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(filters, 3, activation="relu")(inputs)
    x = (layers.MaxPooling2D if pool == "max" else layers.AveragePooling2D)(4)(x)
    x = layers.Dense(dense_units, activation="relu")(layers.Flatten()(x))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x))
'''

STUDY = """
[study]
name = "own_model"

[base]
model = "{model}"
model_args = {{ filters = 4 }}
epochs = 1
batch_size = 16
train_subset = 80
test_subset = 40

[[steps]]
name = "small"
"""


def own_package(folder: Path) -> Path:
    """`ownnets.tiny:small`, written under `folder` (outside the repository); the folder for PYTHONPATH."""
    package = folder / "code" / "ownnets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tiny.py").write_text(MODEL)
    return folder / "code"


def environment(store: Path, code: Path | None) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}/mlflow.db", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([*([str(code)] if code else []), str(REPO)])
    return env


def command(module: str, args: list, env: dict, **run) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"ablation.{module}", *args], env=env, cwd=REPO, text=True,
                          capture_output=True, timeout=600, **run)


def ladder(tmp_path: Path, code: Path | None, data: Path, model="ownnets.tiny:small", *extra):
    (tmp_path / "own.toml").write_text(STUDY.format(model=model))
    args = ["--study", str(tmp_path / "own.toml"), "--profile", "smoke", "--no-report", "--data", str(data), *extra]
    return command("ladder", args, environment(tmp_path / "store", code))


def step_runs(store: Path) -> list:
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("own_model").experiment_id
    return client.search_runs([experiment], f"tags.`{Tag.KIND}` = 'ladder_step'",
                              order_by=["attributes.start_time ASC"])


def test_the_ladder_trains_a_model_by_import_path_and_retrains_it_once_its_source_changes(tmp_path, cifar_tree):
    code = own_package(tmp_path)
    first = ladder(tmp_path, code, cifar_tree)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    again = ladder(tmp_path, code, cifar_tree)  # unchanged: the same work
    assert again.returncode == 0 and "reused finished run" in again.stdout, again.stdout[-3000:] + again.stderr[-3000:]
    source = code / "ownnets" / "tiny.py"
    source.write_text(source.read_text().replace("activation=\"relu\")(inputs)", "activation=\"tanh\")(inputs)"))
    edited = ladder(tmp_path, code, cifar_tree, "ownnets.tiny:small", "--set", "dense_units=6")
    assert edited.returncode == 0, edited.stdout[-3000:] + edited.stderr[-3000:]
    runs = step_runs(tmp_path / "store")
    trained = [r for r in runs if Tag.REUSED_FROM not in r.data.tags]
    assert len(runs) == 3 and len(trained) == 2  # the edit trained anew; the unchanged rerun reused
    assert all(r.info.status == "FINISHED" for r in runs)
    before, after = (r.data for r in trained)
    assert before.params["model"] == "ownnets.tiny:small" and before.params["filters"] == "4"
    assert after.params["dense_units"] == "6" and after.params["pool"] == "max"
    assert before.params["model_source_sha256"] != after.params["model_source_sha256"]
    assert len(after.params["model_source_sha256"]) == 64
    assert before.tags[Tag.CONFIG_HASH] != after.tags[Tag.CONFIG_HASH]


def queue_planned(journal: Path, planner: subprocess.Popen, timeout: float = 300) -> bool:
    """Wait until the planner has queued its units in the journal (or has exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and planner.poll() is None:
        if journal.exists() and any("planned" in s.user_attrs
                                    for s in tracking.open_storage(str(journal))[0].get_all_studies()):
            return True
        time.sleep(0.5)
    return False


def test_a_queue_worker_trains_a_model_by_import_path_and_one_without_its_module_stops_in_one_line(
        tmp_path, cifar_tree):
    code = own_package(tmp_path)
    store, journal = tmp_path / "store", tmp_path / "queue.journal"
    (tmp_path / "own.toml").write_text(STUDY.format(model="ownnets.tiny:small"))
    work = ["--storage", str(journal), "--data", str(cifar_tree)]
    with open(tmp_path / "planner.log", "w") as log:
        planner = subprocess.Popen([sys.executable, "-m", "ablation.ladder", "--study", str(tmp_path / "own.toml"),
                                    "--profile", "smoke", "--no-report", "--workers", "--plan-only", *work],
                                   env=environment(store, code), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert queue_planned(journal, planner), (tmp_path / "planner.log").read_text()[-3000:]
        # Without the model's folder on its path: one line naming the module, exit 2, the unit left waiting.
        lacking = command("worker", [*work, "--idle", "0"], environment(store, None))
        assert lacking.returncode == 2, lacking.stdout[-3000:] + lacking.stderr[-3000:]
        (line,) = lacking.stderr.strip().splitlines()
        assert line.startswith("error: queue ") and "'ownnets.tiny:small'" in line and "'ownnets'" in line, line
        worker = command("worker", [*work, "--idle", "0"], environment(store, code))
        assert worker.returncode == 0 and "ran 1 unit(s)" in worker.stdout, (worker.stdout[-3000:]
                                                                           + worker.stderr[-3000:])
        planner.wait(300)
    finally:
        if planner.poll() is None:
            planner.kill()
            planner.wait()
    assert planner.returncode == 0, (tmp_path / "planner.log").read_text()[-3000:]
    (run,) = step_runs(store)
    assert run.info.status == "FINISHED" and run.data.params["model"] == "ownnets.tiny:small"
    assert len(run.data.params["model_source_sha256"]) == 64


def test_a_model_path_that_cannot_be_used_is_one_line_and_exit_2(tmp_path, cifar_tree):
    code = own_package(tmp_path)
    cases = [("ownnets.missing:small", "no module named 'ownnets.missing'"),
             ("ownnets.tiny:large", "has no function large"),
             ("elsewhere.tiny:small", "No module named 'elsewhere'")]
    for model, needle in cases:
        done = ladder(tmp_path, code, cifar_tree, model)
        assert done.returncode == 2, (model, done.stdout[-2000:], done.stderr[-2000:])
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("error: ") and "own.toml" in line and model in line and needle in line, line
    assert not (tmp_path / "store" / "mlflow.db").exists()  # nothing was written


RULES = """
[model_rules]
filters = { low = 1, high = 16 }
pool = { choices = ["max", "average"] }

[search]
[search.params.filters]
type = "int"
low = 2
high = 8
"""

BAD = '''
def no_default(input_shape, num_classes, *, width):
    pass


def computed(input_shape, num_classes, *, width=2 ** 3):
    pass


def config_named(input_shape, num_classes, *, epochs=3):
    pass


def none_default(input_shape, num_classes, *, activation=None):
    pass
'''


def test_knob_rules_come_from_the_defaults_and_model_rules_narrow_them(tmp_path, monkeypatch):
    from ablation.core.config import StudyError
    from ablation.core.study import apply_overrides, check_model, load_study

    package = tmp_path / "code" / "ownrules"  # a name of its own: this process keeps the packages it imported
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tiny.py").write_text(MODEL)
    (package / "bad.py").write_text(BAD)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    path = tmp_path / "own.toml"
    path.write_text(STUDY.format(model="ownrules.tiny:small") + RULES)
    # Checking the study reads the model's source: no Keras (a fresh process, so nothing imported it before).
    probe = (f"import sys; from ablation.core.study import load_study; load_study({str(path)!r}); "
             "print('keras' in sys.modules)")
    checked = subprocess.run([sys.executable, "-c", probe], env=environment(tmp_path, tmp_path / "code"), cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert checked.stdout.strip() == "False", checked.stdout + checked.stderr
    study = load_study(path)
    assert dict(study.step("small").config.model_args) == {"filters": 4, "dense_units": 8, "pool": "max"}
    assert apply_overrides(study, {"filters": 16, "pool": "average"}).step("small").config.model_args["filters"] == 16
    refused = [({"filters": 2.5}, "model_args.filters must be an integer, got 2.5"),
               ({"filters": 17}, "model_args.filters ([model_rules]) must be >= 1 and <= 16"),
               ({"pool": 3}, "model_args.pool must be a string, got 3"),
               ({"pool": "min"}, "must be one of ['max', 'average']"),
               ({"fliters": 3}, "unknown key(s) ['fliters']; allowed: ")]
    for values, needle in refused:
        with pytest.raises(StudyError) as error:
            apply_overrides(study, values)
        assert needle in str(error.value) and "--set" in str(error.value), str(error.value)
    path.write_text(STUDY.format(model="ownrules.tiny:small") + RULES.replace("high = 8", "high = 32"))
    with pytest.raises(StudyError, match=r"own.toml: \[search.params.filters\]: filters \(\[model_rules\]\) must be"):
        load_study(path)
    for function, needle in [("no_default", "every knob (keyword-only argument) needs a literal default"),
                             ("computed", "every knob (keyword-only argument) needs a literal default"),
                             ("config_named", "knob 'epochs' is named like a Config field"),
                             ("none_default", "knob 'activation': its default None is none of")]:
        with pytest.raises(StudyError) as error:
            check_model(f"ownrules.bad:{function}", "own.toml: [base]")
        assert str(error.value).startswith(f"own.toml: [base]: model 'ownrules.bad:{function}'") and needle in str(
            error.value), str(error.value)
