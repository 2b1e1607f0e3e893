"""Fault injection for tests: one set of fault points, read once at start from
POWERSTRIP_FLOCKER_FAULTS, that does nothing unless a fault is configured.

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
from dataclasses import dataclass, field
from typing import Optional

from twisted.internet import defer
from twisted.logger import Logger

ENV = "POWERSTRIP_FLOCKER_FAULTS"

log = Logger()


class _Held:
    """A push held at a point; release() lets it go on."""

    def __init__(self):
        self.deferred = defer.Deferred()

    def release(self):
        if not self.deferred.called:
            self.deferred.callback(None)


@dataclass
class Faults:
    receive_pause_after_bytes: Optional[int] = None
    send_pause_after_bytes: Optional[int] = None
    pause_before_acquire: bool = False
    pause_before_handoff: bool = False
    # what is held now ({"dataset_id", "bytes", "point"?}, for metrics) and its releases
    paused: list = field(default_factory=list, init=False, compare=False, repr=False)
    _holds: list = field(default_factory=list, init=False, compare=False, repr=False)

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

    # the fault points

    def sending(self, dataset_id, stream):
        """A push's stream (ProcessBodyProducer) is about to start."""
        if self.send_pause_after_bytes is not None:
            stream.hold_after(self.send_pause_after_bytes,
                              lambda stream: self._hold(dataset_id, stream.bytes, stream))

    def receiving(self, dataset_id, sink):
        """A push's sink (ProcessSink) is about to take its body."""
        if self.receive_pause_after_bytes is None:
            return

        def held(sink):
            log.warn("fault injection: receive of {dataset_id} paused after {bytes} bytes",
                     dataset_id=dataset_id, bytes=sink.bytes)
            self._hold(dataset_id, sink.bytes, sink)
        sink.hold_after(self.receive_pause_after_bytes, held)

    async def reached(self, point, dataset_id):
        """A push of dataset_id reached point ("pause_before_acquire" or
        "pause_before_handoff"): hold it there until resume() when that fault is on."""
        if not getattr(self, point):
            return
        held = _Held()
        log.warn("fault injection: push of {dataset_id} held at {point}",
                 dataset_id=dataset_id, point=point)
        self._hold(dataset_id, 0, held, point=point)
        await held.deferred

    def _hold(self, dataset_id, count, held, point=None):
        self.paused.append(dict({"dataset_id": dataset_id, "bytes": count},
                                **({"point": point} if point else {})))
        self._holds.append(held)

    def resume(self):
        """Let everything held go on; how many were."""
        holds, self._holds = self._holds, []
        for held in holds:
            held.release()
        return len(holds)
