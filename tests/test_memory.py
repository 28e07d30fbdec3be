"""ablation.memory: freed blocks stay in the process, so re-allocating them costs no page faults."""

import os
import subprocess
import sys

import pytest

# In a fresh process: 100 times, allocate and touch eight 4 MiB arrays (as a training step's tensors), then free them;
# print the minor page faults it took.
CHURN = """
import resource, sys
import numpy as np
from ablation import memory
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
