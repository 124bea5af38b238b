"""How a process that serves models dies: loudly, and quickly enough not to hold up the rest of the server.

Every process that runs an engine (an engine host, or a stub with ``process: instance``) takes the server-wide
residency lock (`residency`, an ``flock``) for each request's budget. A process killed by a signal while holding
it keeps holding it until the kernel closes its files, and with core dumps on, that is after the core is
written: a 3.2 GB core held a lock for 6.6-7.3 s on the CPU host (`results/logs/s11/cpu_core_dump_lock/`). In session
11's Fig. 12 run on 4 x H200, one engine host death froze every request of all four GPUs for 12 s, a death that
most likely came while it held the lock (the only thing the four hosts share).

So such a process, unless ``DEEPPLAN_CORE_DUMPS=1``, sets its core file limit to 0; a core of it would mostly be
pinned model weights anyway. A fatal signal still prints every thread's Python stack (`faulthandler`), so the
death is in the server's log. Where the system pipes cores to a handler (``/proc/sys/kernel/core_pattern``
starting with ``|``), the kernel ignores the limit and the handler decides.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import sys

CORE_DUMPS_ENV = "DEEPPLAN_CORE_DUMPS"


def prepare_to_die() -> bool:
    """Report fatal signals with Python stacks and, unless ``DEEPPLAN_CORE_DUMPS=1``, dump no core.

    Returns whether core dumps stay as the environment set them. Call once at the start of a serving process.
    """
    faulthandler.enable(file=sys.stderr, all_threads=True)
    if os.environ.get(CORE_DUMPS_ENV, "").strip() == "1":
        return True
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    return False
