"""ablation.core.memory: freed blocks stay in the process, so re-allocating them costs no page faults."""

import os
import subprocess
import sys

import pytest

# In a fresh process: 100 times, allocate and touch eight 4 MiB arrays (as a training step's tensors), then free them;
# print the minor page faults it took.
CHURN = """
import resource, sys
import numpy as np
from ablation.core import memory
print(memory.keep_freed_memory())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    blocks = [np.ones(1 << 20, np.float32) for _ in range(8)]  # 4 MiB each: above glibc's default thresholds
    del blocks
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def churn(**env) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", CHURN], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt: Linux only")
def test_reallocating_a_freed_block_costs_no_page_faults():
    applied, kept = churn()
    unset, system = churn(ABLATION_MALLOC="system")
    assert (applied, unset) == ("True", "False")
    # Without the settings the 32 MiB freed each time goes back to the OS (8,192 pages to fault in again, 100 times).
    assert system > 100 * 4000 and kept < system / 20, (kept, system)


# Train a tiny network 3 epochs on augmented validation images (a Keras PyDataset: a tf.data generator
# dataset, which sets glibc's mmap threshold back to 128 KiB when it is created); at the start of
# epochs 2 and 3, after a validation pass, measure the churn's page faults from within training.
TRAINING = """
import resource, sys, threading
import numpy as np
from ablation.core.config import Config
from ablation.data import load_cifar10, make_splits
from ablation.training.fit import train

def churn():  # in a thread of its own, as TensorFlow's kernels allocate (a malloc arena of their own)
    faults = []
    def work():
        for round in range(21):  # round 0 touches the blocks' pages once; the rest are measured
            if round == 1:
                before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            blocks = [np.ones(1 << 20, np.float32) for _ in range(8)]
            del blocks
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return faults[0]

faults = []
config = Config(model_args={"stage2_blocks": 0, "stage3_blocks": 0, "stage4_blocks": 0}, epochs=3, batch_size=32,
                train_subset=80, test_subset=50, run_eagerly=True, rotation_range=15.0, augment_validation=True)
splits = make_splits(load_cifar10(sys.argv[1]), **config.split_args())
train(config, splits, on_epoch_begin=(lambda epoch, logs: faults.append(churn()),))
print(*faults[1:])
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt: Linux only")
def test_training_keeps_the_settings_after_a_validation_pass_resets_them(cifar_path):
    def faults(**env) -> list[int]:
        done = subprocess.run([sys.executable, "-c", TRAINING, str(cifar_path)], env={**os.environ, **env},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return [int(n) for n in done.stdout.split()]

    kept, system = faults(), faults(ABLATION_MALLOC="system")
    assert len(kept) == len(system) == 2
    # Given back and faulted in again 20 times: about 80,000 faults (at epoch 2 at least: at epoch 3 the
    # thread's arena may serve them from blocks TensorFlow freed); kept, next to none at both.
    assert max(system) > 40_000 and max(kept) < max(system) / 20, (kept, system)
