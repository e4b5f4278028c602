"""Scheduling priority for the control thread.

On a shared CPU the control loop's deadlines are missed when the OS runs another process at the
moment a tick is due. Real-time robot stacks (ros2_control, lerobot deployments on PREEMPT_RT) run
the control thread under ``SCHED_FIFO``. :func:`elevate` asks for that and falls back to a lower
nice value, then to nothing, reporting what it got; it never fails the session.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def elevate(fifo_priority: int) -> str:
    """Raise the calling thread's scheduling priority; returns "fifo:N", "nice:N" or "none".

    Args:
        fifo_priority: SCHED_FIFO priority to ask for (1..99; 0 asks for nothing).
    """
    if fifo_priority <= 0:
        return "none"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(min(fifo_priority, 99)))
        return f"fifo:{fifo_priority}"
    except (PermissionError, OSError, AttributeError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
        return "nice:-10"
    except (PermissionError, OSError):
        log.info("no elevated scheduling priority available (not root, no CAP_SYS_NICE); timing may jitter")
        return "none"


def restore() -> None:
    """Return the calling thread to normal scheduling (best effort)."""
    try:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (PermissionError, OSError, AttributeError):
        pass
