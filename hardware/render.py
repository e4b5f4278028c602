"""OpenGL backend selection for offscreen MuJoCo rendering."""

from __future__ import annotations

import os


def configure_gl() -> str:
    """Choose MuJoCo's GL backend before mujoco is imported; returns it.

    Respects an existing ``MUJOCO_GL``. Otherwise uses OSMesa (software rendering, works on any
    CPU machine with ``libosmesa6``); on a GPU machine set ``MUJOCO_GL=egl`` for speed.
    """
    backend = os.environ.setdefault("MUJOCO_GL", "osmesa")
    if backend == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    elif backend == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    return backend
