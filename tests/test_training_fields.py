"""The changes modern recipes ablate: label smoothing, weight decay, Nesterov, cosine with warm-up, MixUp and
CutMix, top-5 accuracy. Each is trained on a real slice of CIFAR-10 and shown to change what training does."""

import dataclasses
import math
import warnings

import keras
import numpy as np
import pytest

from ablation.core.config import Config, StudyError, check_combination
from ablation.core.profiles import PROFILES
from ablation.core.study import load_study
from ablation.data import load_cifar10, make_splits
from ablation.training.augment import MixedBatches
from ablation.training.fit import build, prepare_inputs, train

TINY = Config(model_args={"stage2_blocks": 0, "stage3_blocks": 0, "stage4_blocks": 0}, epochs=2, batch_size=32,
              train_subset=80, test_subset=50, run_eagerly=True)
ONE_BATCH = dataclasses.replace(TINY, train_subset=40)  # 32 training images: one batch of 32 an epoch


def tiny_splits(cifar_path, config):
    return make_splits(load_cifar10(cifar_path), validation_split=config.validation_split, seed=config.split_seed,
                       train_subset=config.train_subset, test_subset=config.test_subset)


@pytest.fixture(scope="module")
def splits(cifar_path):
    return tiny_splits(cifar_path, TINY)


@pytest.fixture(scope="module")
def one_batch_splits(cifar_path):
    return tiny_splits(cifar_path, ONE_BATCH)


@pytest.fixture(scope="module")
def plain(splits):
    """TINY trained as before these fields: the run each change is compared with."""
    return train(TINY, splits)


def weights(network) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(w) for w in network.trainable_weights]


def cross_entropy(probabilities, targets) -> float:
    return float(-(targets * np.log(np.clip(probabilities, 1e-7, 1.0))).sum(axis=1).mean())


def test_label_smoothing_is_the_loss_training_and_validation_use(splits):
    # Recomputed BatchNorm statistics: the validation outputs are then the network's, not its lag's.
    recomputed = dataclasses.replace(TINY, bn_statistics="recomputed")
    runs = {s: train(dataclasses.replace(recomputed, label_smoothing=s), splits) for s in (0.0, 0.2)}
    one_hot = np.eye(10)[splits.y_val]
    for smoothing, result in runs.items():
        probabilities = result.network.predict(prepare_inputs(splits, recomputed)[1], verbose=0)
        smoothed = cross_entropy(probabilities, one_hot * (1 - smoothing) + smoothing / 10)
        hard = cross_entropy(probabilities, one_hot)
        # At the weights validation ran with, the logged loss is the smoothed cross-entropy.
        assert result.history["val_loss"][-1] == pytest.approx(smoothed, abs=1e-4)
        if smoothing:
            assert abs(smoothed - hard) > 0.05
    # Softer targets keep the training loss up: the network may not drive it towards 0.
    assert runs[0.2].history["loss"][-1] > runs[0.0].history["loss"][-1] + 0.1


def test_weight_decay_shrinks_every_weight_by_its_decoupled_factor(splits, plain):
    decayed = train(dataclasses.replace(TINY, weight_decay=5.0), splits)
    norm = lambda network: math.sqrt(sum(float(np.sum(w ** 2)) for w in weights(network)))  # noqa: E731
    steps = 4  # 2 epochs of 2 batches (64 training images)
    # Adam's steps move the weights alike in both runs; the decay multiplies them by 1 - lr * decay each step.
    assert norm(decayed.network) / norm(plain.network) == pytest.approx((1 - 1e-3 * 5.0) ** steps, abs=5e-4)


def test_nesterov_moves_the_first_step_1_9_times_as_far(one_batch_splits):
    sgd = dataclasses.replace(ONE_BATCH, epochs=1, optimizer="sgd", learning_rate=0.01)
    keras.utils.set_random_seed(sgd.seed)
    start = weights(build(sgd)[0])  # train() builds the same initial weights from the same seed
    moved = {n: [w - w0 for w, w0 in zip(weights(train(dataclasses.replace(sgd, nesterov=n), one_batch_splits).network),
                                        start, strict=True)] for n in (False, True)}
    # Momentum 0.9, first step: plain moves -lr*g, Nesterov -lr*g + 0.9*(-lr*g).
    for plain_step, nesterov_step in zip(moved[False], moved[True], strict=True):
        np.testing.assert_allclose(nesterov_step, 1.9 * plain_step, rtol=0, atol=1e-6)
    assert max(np.abs(step).max() for step in moved[False]) > 1e-4  # the step is far larger than the tolerance


def test_cosine_decay_after_a_linear_warm_up_sets_each_epochs_rate(one_batch_splits):
    config = dataclasses.replace(ONE_BATCH, epochs=4, warmup_epochs=1, lr_decay="cosine", learning_rate=0.01)
    rates = train(config, one_batch_splits).history["learning_rate"]
    # Warm-up epoch 0 at 1/2; then cosine over the 3 epochs left: (1 + cos(pi * t)) / 2 for t = 0, 1/3, 2/3.
    expected = [0.005, 0.01, 0.01 * (1 + math.cos(math.pi / 3)) / 2, 0.01 * (1 + math.cos(2 * math.pi / 3)) / 2]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)


def test_warm_up_epochs_shrink_with_the_profiles():
    config = Config(epochs=200, warmup_epochs=5, lr_decay="cosine")
    assert PROFILES["quick"].apply(config).warmup_epochs == 1  # ceil(5 / 5)
    assert PROFILES["full"].apply(config).warmup_epochs == 5
    assert PROFILES["smoke"].apply(dataclasses.replace(config, warmup_epochs=0)).warmup_epochs == 0  # off stays off


def test_mixup_and_cutmix_make_soft_targets_from_the_runs_seed(splits):
    x, _, _, _ = prepare_inputs(splits, TINY)
    one_hot = np.eye(10, dtype="float32")[splits.y_train]
    mixup = MixedBatches(x, one_hot, dataclasses.replace(TINY, mixup_alpha=0.4), batch_size=32)
    images, targets = mixup[0]
    assert np.allclose(targets.sum(axis=1), 1.0) and not np.isin(targets, (0.0, 1.0)).all()  # soft targets
    weight = targets.max(axis=1).min()  # the weight of the batch's images on themselves (or of their partners)
    assert 0 < weight < 1 and not np.allclose(images, x[mixup.order()[:32]])
    again = MixedBatches(x, one_hot, dataclasses.replace(TINY, mixup_alpha=0.4), batch_size=32)[0]
    assert all(np.array_equal(a, b) for a, b in zip((images, targets), again))  # drawn from (seed, epoch, batch)
    # CutMix: a pasted box; each image keeps the share of its pixels that its own class keeps in the target.
    cutmix = MixedBatches(x, one_hot, dataclasses.replace(TINY, cutmix_alpha=1.0), batch_size=32)
    images, targets = cutmix[1]
    originals, labels = x[cutmix.order()[32:64]], splits.y_train[cutmix.order()[32:64]]
    kept = (images == originals).all(axis=3).mean(axis=(1, 2))
    changed = (kept < 1) & (targets.max(axis=1) < 1)  # images whose partner was one of another class
    assert changed.any()
    np.testing.assert_allclose(targets[changed, labels[changed]], kept[changed], atol=1e-6)


MIXING = dataclasses.replace(TINY, mixup_alpha=0.4, cutmix_alpha=1.0)


@pytest.fixture(scope="module")
def mixed(splits):
    return train(MIXING, splits)


def test_mixing_changes_training_and_repeats_with_its_seed(splits, plain, mixed):
    assert train(MIXING, splits).history["loss"] == mixed.history["loss"]  # bit for bit
    assert mixed.history["loss"] != plain.history["loss"]


def test_a_resumed_run_mixes_as_an_unbroken_one(splits, mixed, tmp_path):
    train(dataclasses.replace(MIXING, epochs=1), splits, checkpoint_folder=tmp_path)  # then stopped
    resumed = train(MIXING, splits, checkpoint_folder=tmp_path)  # goes on from the save after epoch 1
    assert resumed.history["loss"] == mixed.history["loss"]  # epoch 2: the same batches, the same mixes


def test_a_save_from_an_older_version_resumes_with_one_value_an_epoch_for_every_metric(splits, tmp_path):
    """A checkpoint whose history lacks metrics added since (the BatchNorm check, top-5) goes on; those are NaN before."""
    import json

    train(dataclasses.replace(TINY, epochs=1), splits, checkpoint_folder=tmp_path)
    state_file = next(tmp_path.glob("epoch-*/state.json"))
    state = json.loads(state_file.read_text())
    added = ["val_accuracy_moving_bn", "val_accuracy_recomputed_bn", "top5_accuracy", "val_top5_accuracy"]
    state["history"] = {key: values for key, values in state["history"].items() if key not in added}
    state_file.write_text(json.dumps(state))
    resumed = train(TINY, splits, checkpoint_folder=tmp_path)
    assert resumed.epochs_run == 2
    assert {key: len(values) for key, values in resumed.history.items() if values} == \
        {key: 2 for key, values in resumed.history.items() if values}  # what history.csv writes row by row
    for key in added:
        assert math.isnan(resumed.history[key][0]) and not math.isnan(resumed.history[key][1]), key


def test_top5_accuracy_is_logged_each_epoch_and_at_test(splits, plain):
    for top5, top1 in ((plain.history["top5_accuracy"], plain.history["accuracy"]),
                       (plain.history["val_top5_accuracy"], plain.history["val_accuracy"])):
        assert len(top5) == TINY.epochs and all(a >= b for a, b in zip(top5, top1))
    metrics = plain.metrics()
    assert metrics["test_accuracy"] <= metrics["test_top5_accuracy"] < 1
    probabilities = plain.network.predict(prepare_inputs(splits, TINY)[2], verbose=0)
    ranks = (probabilities > probabilities[np.arange(len(splits.y_test)), splits.y_test][:, None]).sum(axis=1)
    assert metrics["test_top5_accuracy"] == pytest.approx((ranks < 5).mean())


def test_the_changes_train_under_xla_with_soft_targets(splits):
    """jit_compile = true compiles the step with the smoothed loss and the top-5 metric (the mixing is in the feed)."""
    config = dataclasses.replace(TINY, epochs=1, run_eagerly=False, jit_compile=True, label_smoothing=0.1,
                                 mixup_alpha=0.2, cutmix_alpha=1.0, optimizer="sgd", nesterov=True, weight_decay=1e-3)
    # Keras runs without XLA (and only warns) under op determinism, which a deterministic run elsewhere
    # in this process may have turned on: turn it off (where Keras reads it), and make the warning an error.
    from tensorflow.python.framework.config import disable_op_determinism

    disable_op_determinism()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*jit_compile.*")
        result = train(config, splits)
    assert all(math.isfinite(result.history[key][0]) for key in ("loss", "top5_accuracy", "val_loss"))


BASE = '[study]\nname = "t"\n[base]\nepochs = 5\n'
REFUSED = {
    "label_smoothing = 1.0": ["label_smoothing", "[0, 1)", "1.0"],
    "weight_decay = -0.1": ["weight_decay", ">= 0"],
    "mixup_alpha = nan": ["mixup_alpha", ">= 0", "nan"],
    "cutmix_alpha = 'yes'": ["cutmix_alpha", "finite number"],
    "nesterov = 1": ["nesterov", "true or false"],
    "lr_decay = 'linear'": ["lr_decay", "cosine"],
    "warmup_epochs = 1.5": ["warmup_epochs", "integer"],
    "nesterov = true": ["nesterov", "sgd", "'adam'"],
    "lr_decay = 'cosine'\nreduce_lr_monitor = 'val_loss'": ["lr_decay", "ReduceLROnPlateau", "reduce_lr_monitor"],
    "warmup_epochs = 2\nreduce_lr_monitor = 'val_loss'": ["warmup_epochs", "ReduceLROnPlateau"],
    "lr_decay = 'cosine'\nlr_schedule = [[3, 0.1]]": ["lr_decay", "lr_schedule", "two decays"],
    "warmup_epochs = 5": ["warmup_epochs (5)", "epochs (5)"],
}


@pytest.mark.parametrize("lines", sorted(REFUSED))
def test_a_bad_value_or_combination_is_refused_in_one_line(tmp_path, lines):
    path = tmp_path / "study.toml"
    path.write_text(BASE + '[[steps]]\nname = "one"\n' + lines + "\n")
    with pytest.raises(StudyError) as error:
        load_study(path)
    message = str(error.value)
    assert "\n" not in message and "study.toml" in message and "'one'" in message
    for needle in REFUSED[lines]:
        assert needle in message, message


def test_modern_recipe_study_applies_at_every_profile():
    study = load_study("modern_recipe")
    configs = [step.config for step in study.steps]
    assert {(c.model, c.model_args["depth"]) for c in configs} == {("resnet_v1", 20)}
    last = study.step("mixup").config
    assert (last.label_smoothing, last.lr_decay, last.weight_decay, last.mixup_alpha) == (0.1, "cosine", 5e-4, 0.2)
    for profile in PROFILES.values():
        for config in configs:
            check_combination(profile.apply(config), profile.name)  # e.g. the warm-up stays shorter than the epochs
    assert PROFILES["smoke"].apply(last).warmup_epochs == 1
