"""Counting the bytes of one transfer, with a log line every few seconds."""

from twisted.logger import Logger

log = Logger()


class Progress:
    """Bytes moved by one transfer; logs progress every `interval` seconds."""

    def __init__(self, reactor, dataset_id, direction, peer, total=None, interval=5.0):
        self.reactor = reactor
        self.dataset_id = dataset_id
        self.direction = direction
        self.peer = peer
        self.total = total
        self.done = 0
        self.interval = interval
        self.started = reactor.seconds()
        self._last_log = self.started
        self._last_logged_bytes = 0

    def add(self, count):
        self.done += count
        now = self.reactor.seconds()
        if now - self._last_log >= self.interval:
            rate = (self.done - self._last_logged_bytes) / max(now - self._last_log, 1e-6)
            log.info(
                "{direction} {dataset_id} {peer_word} {peer}: {done} / {total} bytes, "
                "{rate_mb:.1f} MB/s",
                direction=self.direction, dataset_id=self.dataset_id,
                peer_word="to" if self.direction == "push" else "from", peer=self.peer,
                done=self.done, total=self.total if self.total is not None else "?",
                rate_mb=rate / 1e6, bytes_done=self.done, bytes_total=self.total,
            )
            self._last_log = now
            self._last_logged_bytes = self.done

    def seconds(self):
        return self.reactor.seconds() - self.started

    def as_report(self):
        return {
            "dataset_id": self.dataset_id, "direction": self.direction, "peer": self.peer,
            "bytes_done": self.done, "bytes_total": self.total,
        }

