"""Start holder.py and time how long after its crash the flock on ./lock comes free."""

import fcntl
import subprocess
import sys
import time

holder = subprocess.Popen([sys.executable, "holder.py", *sys.argv[1:3]], stdout=subprocess.PIPE, text=True)
assert holder.stdout is not None
holder.stdout.readline()
start = time.perf_counter()
with open("lock", "a+") as mine:
    fcntl.flock(mine, fcntl.LOCK_EX)
    waited = time.perf_counter() - start
print(f"{sys.argv[2]}: lock free {waited:.2f} s after the holder began to die; exit {holder.wait()}")
