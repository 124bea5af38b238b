"""Touch argv[1] MiB, take an exclusive flock on ./lock, then die of SIGSEGV (argv[2] == "nocore": no core)."""

import ctypes
import fcntl
import resource
import sys

import numpy as np

big = np.ones(int(sys.argv[1]) * 2**20 // 8)  # touched memory: it goes into the core
held = open("lock", "a+")  # noqa: SIM115 - held until the process dies
fcntl.flock(held, fcntl.LOCK_EX)
print("holding", flush=True)
if sys.argv[2] == "nocore":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
ctypes.string_at(0)  # SIGSEGV while holding the lock
