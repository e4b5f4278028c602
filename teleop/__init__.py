"""Teleoperation: the Teleoperator contract, devices (keyboard, gamepad, leader arms) and the scripted operator.

Nothing here imports torch, pygame or lerobot at module load; each device imports what it needs in
``connect()``. The takeover state machine that turns a device into the runtime's Operator lives in
``tandem.teleop.takeover``.
"""
