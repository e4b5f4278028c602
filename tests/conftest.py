"""Shared fixtures. MuJoCo renders with OSMesa on CPU unless MUJOCO_GL is set."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch intra-op thread for a whole module (restored after it): on a shared 2-core machine
    OpenMP spinning makes the small ops of these tests about 10x slower. Opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def zmq_context() -> Iterator[Any]:
    """A private zmq context for a test's own raw sockets (rogue peers, fake learners): every socket opened
    on it defaults to linger 0, and it is destroyed (each socket closed, then terminated) when the test
    ends, passed or failed. A private context left to the garbage collector can block forever in
    ``zmq_ctx_term``: when it is finalized before a socket of its own, that socket is still open."""
    import zmq

    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)
