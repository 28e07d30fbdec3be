"""Attribution designs: components and their configs, plans, measures, and the command end to end.

The end-to-end tests share one temp MLflow store, filled in order by chained fixtures: a tiny ladder
(3 components, 2 seeds), then its leave-one-out, then its Shapley design, then a search. Trainings are a
template ResNet without identity blocks on 64 training images for one eager epoch: seconds each.
"""

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ablation import attribute
from ablation.analysis import stats
from ablation.core.config import StudyError
from ablation.core.profiles import get_profile
from ablation.core.study import load_study
from ablation.engine import designs, units
from ablation.tracking import Kind, Tag
from conftest import run_command, tiny_study_text

ASSIGNMENT = "studies/assignment.toml"
# The tests' tiny study (conftest), two seeds, three cumulative steps, the components and a search.
STEPS = """
[[steps]]
name = "plain"

[[steps]]
name = "flip"
horizontal_flip = true
learning_rate = 2e-3

[[steps]]
name = "regularize"
model_args = { dropout_rate = 0.2 }
learning_rate = 3e-3
"""
AFTER = """
[attribution.components]
flip = { step = "flip" }
dropout = { step = "regularize", fields = ["dropout_rate"] }
faster_lr = { step = "regularize", fields = ["learning_rate"] }

[search]
base_step = "regularize"

[search.params.dropout_rate]
type = "categorical"
choices = [0.4, 0.5]

[search.params.learning_rate]
type = "categorical"
choices = [0.01, 0.02]
"""
TINY = tiny_study_text(STEPS, study={"seeds": 2}, after=AFTER)


# --- Components and the config of a subset ---------------------------------------------------------


def test_the_assignments_five_components_rebuild_its_last_step_to_the_byte():
    study = load_study(ASSIGNMENT)
    game = designs.ladder_game(study)
    assert [c.name for c in game.components] == [
        "augmentation", "stage2_depth", "early_stopping", "lr_schedule", "deeper_dropout"]
    steps = {step.name: step.config for step in study.steps}
    assert designs.compose(game, frozenset()).hash() == steps["template"].hash()
    assert designs.compose(game, frozenset(range(5))).hash() == steps["deeper_dropout"].hash()
    # As trained: the design's full config per seed is the ladder's last step's unit, so its run is reused.
    profile, seeds = get_profile("quick"), (0, 1)
    ladder = units.ladder_units(study, profile, units.resolve_steps(
        dataclasses.replace(study, seeds=seeds), profile, only=["deeper_dropout", "template"]))
    plan = designs.make_plan("leave-one-out", 5, 32)
    design = designs.design_units(study, profile, game, plan, seeds)
    ladder_keys = {(u.row["step"], u.config.seed): u.config.hash() for u in ladder}
    full = [u for u in design if len(u.row["subset"]) == 5]
    assert len(full) == 2
    assert {u.config.hash() for u in full} == {ladder_keys["deeper_dropout", s] for s in seeds}
    assert len(design) == 12 and len({u.config.hash() for u in design}) == 12


def test_default_components_are_each_steps_changes():
    study = dataclasses.replace(load_study(ASSIGNMENT), attribution=())
    game = designs.ladder_game(study)
    assert [c.name for c in game.components] == ["augmentation", "deeper_early_stopping", "lr_schedule",
                                                 "deeper_dropout"]
    by_name = {c.name: dict(c.settings) for c in game.components}
    # Only what differs from the step before: patience 10 and min_delta 1e-4 are already the defaults.
    assert by_name["deeper_early_stopping"] == {"early_stopping_monitor": "val_accuracy",
                                                "restore_best_weights": "on_stop", "stage2_blocks": 7}
    assert by_name["deeper_dropout"] == {"epochs": 75, "stage3_blocks": 5, "stage4_blocks": 2, "dropout_rate": 0.5}
    assert designs.compose(game, frozenset(range(4))).hash() == study.step("deeper_dropout").config.hash()


def test_conflicting_settings_are_resolved_by_ladder_order_and_listed():
    game = designs.ladder_game(load_study(ASSIGNMENT))
    index = {c.name: i for i, c in enumerate(game.components)}
    compose = lambda *names: designs.compose(game, frozenset(index[n] for n in names))  # noqa: E731
    assert {c["setting"]: c["values"] for c in designs.conflicts(game)} == {
        "early_stopping_monitor": [["early_stopping", "val_accuracy"], ["lr_schedule", "val_loss"]],
        "epochs": [["lr_schedule", 50], ["deeper_dropout", 75]]}
    assert compose("early_stopping").early_stopping_monitor == "val_accuracy"
    alone = compose("lr_schedule")
    assert (alone.early_stopping_monitor, alone.restore_best_weights, alone.epochs) == ("val_loss", "always", 50)
    both = compose("early_stopping", "lr_schedule")
    assert (both.early_stopping_monitor, both.restore_best_weights) == ("val_loss", "on_stop")
    assert compose("lr_schedule", "deeper_dropout").epochs == 75 and compose("deeper_dropout").epochs == 75
    deeper = compose("deeper_dropout", "stage2_depth")
    assert dict(deeper.model_args) == {"stage2_blocks": 7, "stage3_blocks": 5, "stage4_blocks": 2, "dropout_rate": 0.5,
                                       "block": "post"}
    assert not deeper.horizontal_flip and deeper.reduce_lr_monitor == ""


@pytest.mark.parametrize("table, message", [
    ('[attribution.components]\na = { step = "augmentation" }', "not covered"),
    ('[attribution.components]\na = { step = "template" }', "after the first"),
    ('[attribution.components]\na = { step = "augmentation", fields = ["epochs"] }', "not set by step 'augmentation'"),
    ('[attribution.components]\na = { step = "augmentation", fieds = ["zoom_range"] }', "fieds"),
    ('[attribution.components]\na = { step = "augmentation", fields = [] }', "non-empty list"),
    ('[attribution.components]\nA = { step = "augmentation" }', "snake_case"),
    ('[attribution]\nparts = 1', "parts"),
    ('[attribution.components]\na = { step = "augmentation" }\nb = { step = "augmentation", fields = ["zoom_range"] }',
     "already in component 'a'"),
])
def test_a_bad_attribution_table_names_the_file_and_key(tmp_path, table, message):
    path = tmp_path / "bad.toml"
    text = open(ASSIGNMENT).read()
    path.write_text(text[:text.index("[attribution.components]")] + table + "\n")
    with pytest.raises(StudyError, match="bad.toml") as error:
        load_study(path)
    assert message in str(error.value)


def test_attribution_needs_a_cumulative_ladder(tmp_path):
    path = tmp_path / "flat.toml"
    path.write_text(tiny_study_text(STEPS, study={"seeds": 2, "cumulative": False}, after=AFTER))
    with pytest.raises(StudyError, match=r"flat.toml: \[attribution\] needs a cumulative ladder"):
        load_study(path)


# --- Plans ----------------------------------------------------------------------------------------


def test_leave_one_out_and_add_one_in_plans():
    full = frozenset(range(4))
    assert designs.make_plan("leave-one-out", 4, 32).subsets == (full, *(full - {i} for i in range(4)))
    assert designs.make_plan("add-one-in", 4, 32).subsets == (frozenset(), *(frozenset({i}) for i in range(4)))


def test_shapley_is_exact_within_the_budget_and_sampled_beyond_it():
    exact = designs.make_plan("shapley", 5, 32)
    assert set(exact.subsets) == set(stats.subsets(5)) and exact.orders == ()
    sampled = designs.make_plan("shapley", 6, 30)
    assert sampled.orders and len(sampled.orders) % 2 == 0
    assert all(sampled.orders[i + 1] == sampled.orders[i][::-1] for i in range(0, len(sampled.orders), 2))
    assert set(sampled.subsets) == stats.subsets_of_orders(sampled.orders) and len(sampled.subsets) <= 30
    # The next antithetic pair would not have fit: the budget is used, not wasted.
    more = stats.permutation_orders(6, len(sampled.orders) + 2, designs.ORDERS_SEED)
    assert len(stats.subsets_of_orders(more)) > 30
    assert designs.make_plan("shapley", 6, 30) == sampled  # the same orders every time: re-runs reuse
    with pytest.raises(StudyError, match="--budget 11 is below the 12 subsets"):
        designs.make_plan("shapley", 6, 11)


# --- Measures from per-(subset, seed) accuracies ------------------------------------------------------


def table_of(k, value, seeds):
    return {(subset, seed): value(subset, seed) for subset in stats.subsets(k) for seed in seeds}


def test_an_additive_metric_gets_each_components_own_effect_from_every_measure():
    effects, seeds = [0.05, -0.02, 0.10], [0, 1, 2]
    value = lambda subset, seed: 0.5 + 0.01 * seed + sum(effects[i] * (1 + 0.1 * seed) for i in subset)  # noqa: E731
    measured = designs.measure(3, table_of(3, value, seeds), seeds)
    own = np.array([[e * (1 + 0.1 * s) for s in seeds] for e in effects])
    for name in ("leave_one_out", "add_one_in", "shapley"):
        assert measured[name][0] == seeds
        np.testing.assert_allclose(measured[name][1], own, atol=1e-12)
    assert measured["shapley_exact"]


def test_a_pairwise_interaction_is_split_as_the_textbook_says():
    # v(S) = 0.04 [0 in S] + 0.02 [1 in S] + 0.06 [0 and 1 in S]; component 2 does nothing.
    value = lambda subset, seed: 0.5 + 0.04 * (0 in subset) + 0.02 * (1 in subset) + 0.06 * ({0, 1} <= subset)  # noqa: E731
    measured = designs.measure(3, table_of(3, value, [0, 1]), [0, 1])
    np.testing.assert_allclose(measured["shapley"][1][:, 0], [0.07, 0.05, 0.0], atol=1e-12)  # the interaction halved
    np.testing.assert_allclose(measured["leave_one_out"][1][:, 0], [0.10, 0.08, 0.0], atol=1e-12)  # all of it, twice
    np.testing.assert_allclose(measured["add_one_in"][1][:, 0], [0.04, 0.02, 0.0], atol=1e-12)  # none of it
    result = designs.summarize_measures("s", "smoke", GAME3, designs.make_plan("shapley", 3, 32), [0, 1], measured)
    assert result["measures"]["shapley"]["left_over"]["mean"] == pytest.approx(0.0, abs=1e-12)
    assert result["measures"]["add_one_in"]["left_over"]["mean"] == pytest.approx(0.06)
    assert result["measures"]["leave_one_out"]["left_over"]["mean"] == pytest.approx(-0.06)


def test_a_sampled_design_gives_shapley_values_that_add_up_with_a_sampling_error():
    plan = designs.make_plan("shapley", 4, 12)
    assert plan.orders and len(plan.subsets) <= 12
    value = lambda subset, seed: 0.3 + 0.05 * len(subset) + 0.03 * ({0, 3} <= subset) - 0.01 * seed  # noqa: E731
    values = {(subset, seed): value(subset, seed) for subset in plan.subsets for seed in (0, 1)}
    measured = designs.measure(4, values, [0, 1], plan.orders)
    assert not measured["shapley_exact"] and measured["sampling_se"].shape == (4,)
    # Every antithetic pair splits a pairwise interaction exactly: 0.05 each, and 0.03 shared by 0 and 3.
    assert measured["shapley"][0] == [0, 1]
    np.testing.assert_allclose(measured["shapley"][1], [[0.065] * 2, [0.05] * 2, [0.05] * 2, [0.065] * 2], atol=1e-12)
    np.testing.assert_allclose(measured["sampling_se"], 0, atol=1e-12)


GAME3 = designs.Game("ladder", "a", None, "d", None, tuple(
    designs.Component(name, step, {}) for name, step in (("x", "b"), ("y", "c"), ("z", "c"))),
    steps=(("a", None), ("b", None), ("c", None)))


def test_a_split_steps_ladder_gain_is_counted_once():
    accuracies = {("a", 0): 0.5, ("b", 0): 0.6, ("c", 0): 0.9}
    gains = designs.ladder_gains(GAME3, accuracies, [0, 1])
    assert gains[0] == [0]  # seed 1 has no ladder run
    np.testing.assert_allclose(gains[1][:, 0], [0.1, 0.3, 0.0])
    measured = {"ladder_gain": gains, "leave_one_out": None, "add_one_in": None, "shapley": None,
                "shapley_exact": False, "sampling_se": None, "full_gain": ([0], np.array([[0.4]]))}
    result = designs.summarize_measures("s", "smoke", GAME3, designs.make_plan("add-one-in", 3, 32), [0, 1],
                                        measured)
    column = result["measures"]["ladder_gain"]
    assert column["components"][2] is None and column["sum"]["mean"] == pytest.approx(0.4)
    assert column["left_over"]["mean"] == pytest.approx(0.0) and result["shared_step"] == ["y", "z"]


# --- The command end to end ----------------------------------------------------------------------------


def attribute_command(args, store):
    return run_command("attribute", ["--profile", "smoke", *args], store)


def runs_of(store):
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def trained(runs) -> int:
    """Runs that trained (not copies of a finished run): what a design cost."""
    return sum(1 for r in runs if r.data.tags.get(Tag.WORK_KEY) and Tag.REUSED_FROM not in r.data.tags)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, cifar_path):
    """A temp store with the tiny study's ladder (3 steps x 2 seeds)."""
    folder = tmp_path_factory.mktemp("attribution")
    (folder / "tiny.toml").write_text(TINY)
    done = run_command("ladder", ["--study", str(folder / "tiny.toml"), "--profile", "smoke", "--no-report",
                                  "--data", str(cifar_path)], folder)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder, ["--study", str(folder / "tiny.toml"), "--data", str(cifar_path), "--reports", str(folder / "reports")]


@pytest.fixture(scope="module")
def leave_one_out(tiny):
    store, args = tiny
    before = trained(runs_of(store)[1])
    done = attribute_command(["--design", "leave-one-out", *args], store)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, before


@pytest.mark.slow
def test_leave_one_out_after_the_ladder_trains_k_new_configs(tiny, leave_one_out):
    store, _ = tiny
    done, before = leave_one_out
    assert "4 subsets x 2 seed(s) [0, 1] = 8 runs; 2 already finished in the store (reused), 6 to train" in done.stdout
    client, runs = runs_of(store)
    # k = 3 components, 2 seeds: 6 trainings; the full config is the ladder's last step, reused for both seeds.
    assert trained(runs) - before == 6
    parent = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.DESIGN]
    assert len(parent) == 1 and parent[0].data.tags[Tag.DESIGN] == "leave-one-out"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(children) == 8 and all(r.data.tags[Tag.KIND] == Kind.DESIGN_UNIT for r in children)
    ladder_last = {r.info.run_id for r in runs
                   if r.data.tags.get(Tag.KIND) == Kind.LADDER_STEP and r.data.tags[Tag.STEP] == "regularize"}
    reused = [r for r in children if Tag.REUSED_FROM in r.data.tags]
    assert len(ladder_last) == 2 and {r.data.tags[Tag.REUSED_FROM] for r in reused} == ladder_last
    assert {r.data.tags[Tag.SUBSET] for r in reused} == {json.dumps(["flip", "dropout", "faster_lr"])}
    table = done.stdout[done.stdout.index("component "):]
    assert "leave-one-out drop" in table and "Conflict: learning_rate is set by flip 0.002 < faster_lr 0.003" in table
    assert "(run --design shapley)" in table


@pytest.fixture(scope="module")
def shapley(tiny, leave_one_out):
    store, args = tiny
    before = trained(runs_of(store)[1])
    done = attribute_command(["--design", "shapley", *args], store)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, before


@pytest.mark.slow
def test_shapley_end_to_end_trains_only_the_missing_subsets_and_writes_its_outputs(tiny, shapley):
    store, _ = tiny
    done, before = shapley
    assert "exact Shapley values: all 2^3 = 8 subsets" in done.stdout
    assert "8 subsets x 2 seed(s) [0, 1] = 16 runs; 12 already finished in the store (reused), 4 to train" in done.stdout
    client, runs = runs_of(store)
    assert trained(runs) - before == 4  # {dropout} and {faster_lr}, per seed: the ladder and leave-one-out did the rest
    parent = [r for r in runs if r.data.tags.get(Tag.DESIGN) == "shapley" and r.data.tags[Tag.KIND] == Kind.DESIGN][0]
    summary = json.loads(open(client.download_artifacts(parent.info.run_id, "summary.json")).read())
    shapley_column = summary["measures"]["shapley"]
    assert summary["shapley_exact"] and shapley_column["seeds"] == [0, 1]
    assert shapley_column["sum"]["mean"] == pytest.approx(summary["full_gain"]["mean"], abs=1e-12)
    assert all(summary["measures"][name] is not None for name in designs.MEASURES)  # every design's subsets are in
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "attribution")}
    assert artifacts == {f"attribution/attribution-shapley.{suffix}" for suffix in ("csv", "md", "png")}
    folder = store / "reports" / "tiny"
    rows = open(folder / "attribution-shapley.csv").read().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["flip", "dropout", "faster_lr", "sum", "left_over"]
    assert "Shapley value" in (folder / "attribution-shapley.md").read_text()
    assert (folder / "attribution-shapley.png").read_bytes()[:4] == b"\x89PNG"
    table = done.stdout[done.stdout.index("component "):]
    left_over = next(line for line in table.splitlines() if line.startswith("full gain - sum"))
    assert left_over.split()[-3:] == ["+0.0", "[+0.0,", "+0.0]"]  # the Shapley column (the last here) adds up exactly


@pytest.mark.slow
def test_a_sampled_design_over_finished_subsets_trains_nothing(tiny, shapley):
    store, args = tiny
    before = trained(runs_of(store)[1])
    done = attribute_command(["--design", "shapley", "--budget", "6", *args], store)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "exceed --budget 6, so 2 random orders (1 antithetic pair(s)) visit 6" in done.stdout
    assert "6 subsets x 2 seed(s) [0, 1] = 12 runs; 12 already finished in the store (reused), 0 to train" in done.stdout
    assert trained(runs_of(store)[1]) == before and "epoch   1/1" not in done.stdout


@pytest.mark.slow
def test_the_search_best_trial_is_attributed_knob_by_knob(tiny, shapley, cifar_path):
    store, args = tiny
    search = run_command("search", ["--study", args[1], "--profile", "smoke", "--trials", "2", "--data",
                                    str(cifar_path), "--reports", str(store / "reports")], store)
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
    before = trained(runs_of(store)[1])
    done = attribute_command(["--design", "leave-one-out", "--from-search", "--seeds", "1", *args], store)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 components from regularize to search_best-trial" in done.stdout
    assert "3 subsets x 1 seed(s) [0] = 3 runs; 1 already finished in the store (reused), 2 to train" in done.stdout
    assert trained(runs_of(store)[1]) - before == 2
    table = done.stdout[done.stdout.index("component "):]
    assert "Optuna importance" in table and "ladder gain" not in table
    rows = {line.split()[0]: line for line in table.splitlines()[2:4]}
    assert set(rows) == {"dropout_rate", "learning_rate"}


DIVERGING = tiny_study_text("""[[steps]]
name = "plain"

[[steps]]
name = "diverge"
optimizer = "sgd"
learning_rate = 1e30

[[steps]]
name = "recover"
optimizer = "adam"
learning_rate = 1e-3
horizontal_flip = true
""", study={"seeds": 2})


@pytest.mark.slow
def test_a_diverging_subset_is_failed_and_missing_never_a_nan(tmp_path, cifar_path):
    (tmp_path / "tiny.toml").write_text(DIVERGING)
    done = attribute_command(["--design", "add-one-in", "--seeds", "1", "--study", str(tmp_path / "tiny.toml"),
                              "--data", str(cifar_path), "--reports", str(tmp_path / "reports")], tmp_path)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED: base + ['diverge'] seed 0:" in done.stderr and "diverged" in done.stderr
    client, runs = runs_of(tmp_path)
    parent = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.DESIGN][0]
    summary = json.loads(open(client.download_artifacts(parent.info.run_id, "summary.json")).read())
    assert summary["failed"] == [{"components": ["diverge"], "seed": 0, "error": summary["failed"][0]["error"]}]
    assert summary["measures"]["add_one_in"] is None  # {diverge} measured nothing, so add-one-in has no seed
    assert summary["full_gain"]["seeds"] == [0] and math.isfinite(summary["full_gain"]["mean"])  # these trained
    assert "FAILED, so missing above: plain + diverge, seed 0: Diverged" in done.stdout


# --- Input errors and a light --help ----------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--design", "shapley", "--budget", "5"], "--budget 5 is below the 6 subsets"),
    (["--design", "leave-one-out", "--steps", "a"], "unrecognized arguments"),
    (["--design", "wrong"], "invalid choice"),
    (["--design", "shapley", "--budget", "0"], "--budget: must be a positive integer, got '0'"),
    (["--design", "shapley", "--seeds", "0"], "--seeds: must be a count of seeds from 1 to"),
])
def test_bad_input_is_an_error_before_anything_runs(tmp_path, args, message):
    (tmp_path / "tiny.toml").write_text(TINY)
    done = attribute_command([*args, "--study", str(tmp_path / "tiny.toml")], tmp_path)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_help_imports_no_engine():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "ablation.attribute", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--design" in done.stdout and "--budget" in done.stdout
    for heavy in ("tensorflow", "mlflow", "optuna", "matplotlib"):
        assert heavy not in done.stderr


def test_the_commands_designs_are_the_engines():
    assert set(attribute.DESIGNS) == {"leave-one-out", "add-one-in", "shapley"}
    for design in attribute.DESIGNS:
        assert designs.make_plan(design, 2, attribute.DEFAULT_BUDGET).design == design
