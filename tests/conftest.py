"""Suite-wide settings: one torch/OpenMP thread per process.

The suite's models are tiny; on a 2-core machine two threads per process (and subprocesses in the
kill-and-resume tests) oversubscribe the cores and run many times slower than one. Set here, before
torch is imported, so subprocesses inherit it too.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
