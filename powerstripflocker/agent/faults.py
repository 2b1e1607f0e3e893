"""Fault injection for tests, read once at start from POWERSTRIP_FLOCKER_FAULTS.

POWERSTRIP_FLOCKER_FAULTS="receive-pause-after-bytes=N": a receiving agent stops reading a
push (pauses the TCP transport for good) once N bytes of it arrived, logs it and lists it
under "fault_paused" in GET /agent/v1/metrics, so a test can kill -9 it mid-push without
sleeping and hoping, or do something else (restart the control service) and then let it go
on with POST /agent/v1/faults/resume (served only while a fault is configured).

POWERSTRIP_FLOCKER_FAULTS="send-pause-after-bytes=N": a sending agent stops feeding a push
once N bytes went out (listed under "fault_paused" too), so a test can kill -9 the sender
mid-push while the receiver keeps reading and sees the connection drop.

POWERSTRIP_FLOCKER_FAULTS="pause-before-acquire": a sending agent whose push went through
holds before asking the receiver to acquire it (the receiver has a complete, unacquired
copy; the sender is still the only primary). "pause-before-handoff": a sending agent holds
after the receiver acquired the dataset and before marking its own copy handed off (both
nodes hold a primary copy). Both are listed under "fault_paused" with their "point" and go
on with POST /agent/v1/faults/resume.

Several faults: comma-separated.
"""

import os
from dataclasses import dataclass
from typing import Optional

ENV = "POWERSTRIP_FLOCKER_FAULTS"


@dataclass(frozen=True)
class Faults:
    receive_pause_after_bytes: Optional[int] = None
    send_pause_after_bytes: Optional[int] = None
    pause_before_acquire: bool = False
    pause_before_handoff: bool = False

    @classmethod
    def parse(cls, text):
        values = {}
        for item in (text or "").split(","):
            item = item.strip()
            if not item:
                continue
            key, _, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if key in ("pause_before_acquire", "pause_before_handoff"):
                values[key] = value.strip().lower() in ("", "1", "true", "yes")
                continue
            if key not in ("receive_pause_after_bytes", "send_pause_after_bytes"):
                raise ValueError(f"unknown fault {key!r} in {ENV}")
            values[key] = int(value)
        return cls(**values)

    @classmethod
    def from_environment(cls, environ=None):
        return cls.parse((environ if environ is not None else os.environ).get(ENV, ""))

    def active(self):
        return self.receive_pause_after_bytes is not None \
            or self.send_pause_after_bytes is not None \
            or self.pause_before_acquire or self.pause_before_handoff
