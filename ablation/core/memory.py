"""Keep freed memory in the process while training: far fewer page faults, less CPU per image.

glibc's malloc serves a large block with its own mmap and gives the top of its heaps back to the OS
once more than a threshold is free there (both thresholds adapt, but stay at a few MiB), so a training
step, which frees and re-allocates the same activation and gradient tensors every batch, has their
pages faulted in again and again: 144-509 minor page faults per training image of the template
(batch 32), 9-13% of its CPU time in the kernel. With blocks up to 32 MiB served from the heaps and a
trim threshold of 1 GiB the freed pages are reused: 6 faults per image. The benchmark's ratio 7
measures what that saves in CPU per image and costs in peak memory (docs/results.md, "Performance").
Linux with glibc only; anywhere else, and with ABLATION_MALLOC=system, nothing changes.
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (glibc's malloc.h)
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024

def keep_freed_memory() -> bool:
    """Apply the settings; True when glibc took them.

    Cheap, and to be called again whenever something may have reset them: TensorFlow's generator
    datasets (a Keras PyDataset, such as the augmented validation images) set glibc's mmap threshold
    back to 128 KiB each time one is created, so training applies them again before every epoch.
    """
    if sys.platform != "linux" or os.environ.get("ABLATION_MALLOC", "").strip() == "system":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD,
                                                                                          TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
