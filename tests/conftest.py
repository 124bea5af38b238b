"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine, thread hand-offs cost more than these tiny ops."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def host_files_removed() -> Iterator[None]:
    """Engine-host files the tests leave in ``$TMPDIR/deepplan-<uid>/`` go at the end, as a stopped server's do.

    Tests start hosts for throw-away residency folders without a server to clean up after them: each left a spawn
    lock, and a killed host its socket (422 files on the CI host after many runs).
    """
    from deepplan_backend.hosting.host_client import remove_unused_files, socket_dir

    before = set(socket_dir().iterdir())
    yield
    remove_unused_files(set(socket_dir().iterdir()) - before)
