"""A recording session for the crash tests: ``python recorder_crash_child.py ROOT [overrides...]``.

Runs ``tandem run``'s Session with recording on and prints one line per event to stdout (flushed), so
the test knows exactly which ticks the loop produced before it kills the process:
``SESSION <n>`` (the recorder's session number), ``T <episode> <tick>`` per tick (printed just before
the recorder's ``on_tick``: a kill in between loses that tick), ``END <episode> <outcome>``, ``DONE <stats>``.
"""

from __future__ import annotations

import json
import sys

from tandem.runtime.config import compose_run
from tandem.runtime.recording.recorder import Recorder
from tandem.runtime.session import Session


class Printer:
    """TickSink printing the ticks."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.announced = False

    def start_episode(self, episode: int, task: str) -> None:
        if not self.announced:
            recorder = next(s for s in self.session.sinks if isinstance(s, Recorder))
            print(f"SESSION {recorder.session}", flush=True)
            self.announced = True

    def on_tick(self, record: object) -> None:
        print(f"T {record.episode} {record.tick}", flush=True)

    def end_episode(self, result: object) -> None:
        print(f"END {result.episode} {result.outcome}", flush=True)


def main() -> int:
    root, overrides = sys.argv[1], sys.argv[2:]
    cfg = compose_run(["record.enabled=true", f"record.root={root}", *overrides])
    session = Session(cfg)
    session.sinks.append(Printer(session))  # the session appends its recorder after this sink
    summary = session.run()
    print(f"DONE {json.dumps(summary.recording)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
