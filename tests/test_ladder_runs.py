"""The smoke ladder end to end on stores of their own: the network studies, more seeds, --until-decided (these
two on the tiny study's network, with the assignment's first steps).
(test_ladder.py reads the session's smoke ladder; apart, each file is a unit of work for xdist.)"""

import json
import re

import pytest

from ablation.core.study import load_study
from ablation.tracking import Kind, Tag
from conftest import tiny_study
from test_ladder import ladder, runs_of

pytestmark = pytest.mark.slow


# keras_resnet's 110-layer networks cost minutes even at smoke size: CI runs its shallowest v1 and
# v2 steps (every network is also built and trained a step in test_models.py).
@pytest.mark.parametrize("study, steps, only", [
    ("studies/architectures.toml",
     ["vgg_like", "template_resnet", "preact_resnet", "resnet_20", "resnet_18", "inception_resnet"], None),
    ("studies/keras_resnet.toml", ["resnet_v1_20", "resnet_v2_56"], "resnet_v1_20,resnet_v2_56"),
])
def test_network_studies_leave_one_run_per_network(tmp_path, cifar_path, study, steps, only):
    done = ladder(["--study", study, "--data", str(cifar_path), *(["--steps", only] if only else [])], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    _, runs = runs_of(tmp_path, load_study(study).name)
    children = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.LADDER_STEP]
    assert [r.data.tags["mlflow.runName"] for r in children] == steps
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.metrics["num_params"] > 0 and run.data.metrics["flops"] > 0
        assert run.data.metrics["seconds_per_epoch"] > 0
    # The summary shows each network's accuracy, parameters, FLOPs and seconds per epoch.
    table = done.stdout[done.stdout.index("step "):]
    assert "params" in table and "MFLOPs" in table and "s/epoch" in table
    by_name = {r.data.tags["mlflow.runName"]: r for r in children}
    for name in steps:
        line = next(line for line in table.splitlines() if line.startswith(name + " "))
        assert f"{int(by_name[name].data.metrics['num_params']):,}" in line


AUGMENTATION = ("rotation_range=15.0", "width_shift_range=0.1", "height_shift_range=0.1", "horizontal_flip=true",
                "zoom_range=0.1")
# The assignment's first three steps on the tiny network (a deeper stage 2 for the third).
FIRST_STEPS = ('[[steps]]\nname = "template"\n\n[[steps]]\nname = "augmentation"\n'
               + "".join(f"{line.replace('=', ' = ')}\n" for line in AUGMENTATION)
               + '\n[[steps]]\nname = "deeper_early_stopping"\nmodel_args = { stage2_blocks = 1 }\n')


def test_more_seeds_train_only_the_new_replicates(tmp_path, cifar_path):
    """--seeds 3 after --seeds 2 trains one more replicate per step and reuses the rest; the changes get tested."""
    study = ["--study", str(tiny_study(tmp_path, FIRST_STEPS)), "--data", str(cifar_path)]
    first = ladder([*study, "--steps", "template,augmentation", "--seeds", "2"], tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    again = ladder([*study, "--steps", "template,augmentation", "--seeds", "3"], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("reused finished run") == 4
    _, runs = runs_of(tmp_path, "tiny")
    trained = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.LADDER_STEP and Tag.REUSED_FROM not in r.data.tags]
    assert sorted((r.data.tags[Tag.STEP], r.data.tags[Tag.SEED]) for r in trained) == [
        ("augmentation", "0"), ("augmentation", "1"), ("augmentation", "2"),
        ("template", "0"), ("template", "1"), ("template", "2")]
    assert {r.data.tags[Tag.SPLIT_SEED] for r in trained} == {"0"}  # one split: every replicate on the same images
    parents = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.LADDER]
    assert [json.loads(p.data.tags[Tag.SEEDS]) for p in parents] == [[0, 1], [0, 1, 2]]
    # The end-of-run table: three seeds per step, and the change tested over them.
    line = next(line for line in again.stdout.splitlines() if line.startswith("augmentation vs template"))
    assert line.split()[3] == "3"
    assert "p (flip): exact sign-flip test of each change alone (cannot go below 0.25 with 3 seeds)" in again.stdout


def test_until_decided_adds_seeds_only_to_undecided_changes_and_stops(tmp_path, cifar_path):
    """--until-decided: augmentation given to every step (--set) makes augmentation vs template a zero difference,
    equivalent within the wide margin at the first look; only the steps of changes still undecided get more
    seeds, and the store holds exactly the replicates the table counts."""
    same = [item for field in AUGMENTATION for item in ("--set", field)]
    done = ladder(["--study", str(tiny_study(tmp_path, FIRST_STEPS)), "--data", str(cifar_path), *same,
                   "--seeds", "3", "--until-decided", "--max-seeds", "5", "--rope", "50"], tmp_path)
    (tmp_path / "stdout.txt").write_text(done.stdout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = {line.split()[0]: line for line in done.stdout.splitlines()
             if re.match(r"(augmentation|deeper_early_stopping) vs \w+ +\d", line)}
    n_of = {step: int(line.split()[3]) for step, line in table.items()}
    assert n_of["augmentation"] == 3 and "equivalent" in table["augmentation"]  # decided at the first look
    # A change stops below --max-seeds only once decided; the one left undecided runs to the end.
    assert n_of["deeper_early_stopping"] == 5 or "undecided" not in table["deeper_early_stopping"]
    _, runs = runs_of(tmp_path, "tiny")
    seeds = {}
    for run in runs:
        if run.data.tags.get(Tag.KIND) == Kind.LADDER_STEP:
            seeds.setdefault(run.data.tags[Tag.STEP], set()).add(int(run.data.tags[Tag.SEED]))
    more = n_of["deeper_early_stopping"]
    assert seeds == {"template": {0, 1, 2}, "augmentation": set(range(more)), "deeper_early_stopping": set(range(more))}
    assert f"seeds spent: {3 + 2 * more} replicates (step x seed) against 15 for every step at --max-seeds 5" \
        in done.stdout
    assert "look 1/2 at 3 seeds (alpha 0.0250 a look)" in done.stdout and ("look 2/2" in done.stdout) == (more == 5)
