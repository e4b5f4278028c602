"""Robots: the ``Robot`` contract, simulated robots, and adapters for lerobot's real robots.

Nothing here imports torch, mujoco or lerobot at module load; each robot imports what it needs
in ``connect()``.
"""
