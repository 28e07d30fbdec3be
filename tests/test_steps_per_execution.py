"""steps_per_execution = 4: Keras trains 4 batches per call and the guards still hold, every 4 batches.

The batch hooks see every 4th batch and the epoch's last (10 batches: 4, 8, 10), the training is the
one of steps_per_execution = 1, a save is continued, a diverging run is caught in its first call and a
SIGTERM stops a ladder mid-epoch: KILLED, its checkpoint continued by the next command.
"""

import dataclasses
import math
import signal
import time

import pytest

from ablation.core.config import Config
from ablation.data import load_cifar10, make_splits
from ablation.training.fit import Diverged, train
from conftest import TINY_VGG, tiny_study_text
from test_resilience import history, ladder, runs_of

# Compiled (the path a GPU takes), 64 training images in batches of 7: 10 batches an epoch, not a multiple of 4.
TINY = Config(model_args={"stage2_blocks": 0, "stage3_blocks": 0, "stage4_blocks": 0}, epochs=2, batch_size=7,
              train_subset=80, test_subset=50, deterministic=True, steps_per_execution=4)
CALL_ENDS = [4, 8, 10]  # batches done at each call's end, in every epoch


@pytest.fixture(scope="module")
def tiny_splits(cifar_path):
    splits = make_splits(load_cifar10(cifar_path), **TINY.split_args())
    assert math.ceil(len(splits.y_train) / TINY.batch_size) == 10
    return splits


def test_the_field_is_a_param_and_enters_the_hash_only_away_from_1():
    # Left at 1 the hash is the one recorded before the field existed (tests/test_config.py's recorded hashes).
    assert Config().params()["steps_per_execution"] == 1
    assert dataclasses.replace(TINY, steps_per_execution=1).hash() != TINY.hash()


def test_hooks_fire_every_4_batches_and_the_epochs_end_trains_the_rest(tiny_splits):
    seen = []
    four = train(TINY, tiny_splits, on_batch=[lambda batch, logs: seen.append(batch)])
    assert seen == CALL_ENDS * 2
    one = train(dataclasses.replace(TINY, steps_per_execution=1), tiny_splits)
    # The same batches, the same updates (the last call trained the 2 batches left, not 4 or none).
    assert four.history["loss"] == one.history["loss"]
    assert four.history["val_loss"] == one.history["val_loss"]
    assert four.test_accuracy == one.test_accuracy


def test_a_save_is_continued_under_4_batches_a_call(tiny_splits, tmp_path):
    first, seen = train(dataclasses.replace(TINY, epochs=1), tiny_splits, checkpoint_folder=tmp_path), []
    resumed = train(TINY, tiny_splits, checkpoint_folder=tmp_path, on_batch=[lambda batch, logs: seen.append(batch)])
    assert seen == CALL_ENDS  # epoch 2 only: epoch 1 came from the save
    assert resumed.epochs_run == 2 and resumed.history["loss"][0] == first.history["loss"][0]
    assert all(math.isfinite(v) for v in resumed.history["loss"])


def test_a_diverging_run_is_caught_at_the_end_of_its_first_call(tiny_splits):
    # One batch a call, it is caught at batch 2 (the first update blows the weights up).
    with pytest.raises(Diverged, match=r"loss (nan|-?inf) at epoch 1, batch 4$"):
        train(dataclasses.replace(TINY, optimizer="sgd", learning_rate=1e12, epochs=1), tiny_splits)


# 64 training images in batches of 2: 32 batches, 8 calls an epoch.
STUDY = tiny_study_text(network=TINY_VGG, study={"cumulative": False}, epochs=3, batch_size=2,
                        steps_per_execution=4)


@pytest.mark.slow
def test_sigterm_stops_a_ladder_mid_epoch_killed_and_the_next_command_continues_it(tmp_path, cifar_tree):
    process = ladder(tmp_path, STUDY, cifar_tree, start_new_session=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "epoch   1/3" in line:  # epoch 1 ended and is saved
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            break
    output = "".join(lines) + process.communicate(timeout=600)[0]
    assert process.returncode == 143 and "interrupted by SIGTERM" in output, output[-3000:]
    assert time.monotonic() - signalled < 60, output[-3000:]
    client, runs = runs_of(tmp_path)
    assert [r.info.status for r in runs] == ["KILLED", "KILLED"]
    step = runs[1]
    assert step.data.params["steps_per_execution"] == "4"
    assert len(history(client, step, "loss")) == 1  # stopped inside epoch 2, at a call's end
    again = ladder(tmp_path, STUDY, cifar_tree)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming from the checkpoint after epoch 1/3" in again.stdout
    client, runs = runs_of(tmp_path)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert [s for s, _ in history(client, runs[1], "loss")] == [1, 2, 3]
