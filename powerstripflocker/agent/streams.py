"""Streams between subprocesses and HTTP bodies, never buffered whole in memory.

ProcessBodyProducer: an IBodyProducer whose bytes are a subprocess's stdout (tar c,
btrfs send); treq sends it chunked, and TCP back-pressure pauses reading the pipe.

ProcessSink: the receiving end; an HTTP request body is written chunk by chunk to a
subprocess's stdin (tar x, btrfs receive). When the pipe's buffer fills, the network
transport is paused until the subprocess catches up.

Progress counts bytes and logs "done / total, rate" every few seconds.
"""

import errno
import os

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

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


class CommandFailed(Exception):
    def __init__(self, argv, status, stderr=b""):
        self.argv = argv
        self.status = status
        self.stderr = stderr
        text = stderr.decode("utf-8", "replace").strip()[-2000:]
        super().__init__(f"{' '.join(map(str, argv))} failed ({status}): {text}")


# errno texts a tool's stderr may carry, most telling first: the cause of a failure.
CAUSES = [os.strerror(code) for code in (
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENOMEM, errno.EACCES,
    errno.EPERM, errno.ENOENT)]


def failure_cause(error):
    """The short cause of a failed command or OS call ("No space left on device"),
    else its text."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = error.stderr.decode("utf-8", "replace") if isinstance(error, CommandFailed) \
        else str(error)
    for cause in CAUSES:
        if cause in text:
            return cause
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else str(error)


class _Collect(ProcessProtocol):
    """Collects stderr (bounded) and fires `ended` with the exit status."""

    def __init__(self):
        self.ended = defer.Deferred()
        self.stderr = b""

    def errReceived(self, data):
        self.stderr = (self.stderr + data)[-16384:]

    def processEnded(self, reason):
        code = getattr(reason.value, "exitCode", None)
        signal = getattr(reason.value, "signal", None)
        self.ended.callback(code if code is not None else f"signal {signal}")


def _spawn(reactor, protocol, argv, cwd=None, stdin=True, stdout=True):
    fds = {0: "w" if stdin else "r", 1: "r" if stdout else "r", 2: "r"}
    if not stdin:
        fds[0] = os.open(os.devnull, os.O_RDONLY)
    transport = reactor.spawnProcess(
        protocol, argv[0], list(argv), env=dict(os.environ), path=cwd, childFDs=fds,
    )
    if not stdin:
        os.close(fds[0])
    return transport


async def run(reactor, argv, cwd=None):
    """Run argv to completion; return stdout. Raise CommandFailed on a non-zero exit."""
    class Output(_Collect):
        def __init__(self):
            super().__init__()
            self.out = []

        def outReceived(self, data):
            self.out.append(data)

    protocol = Output()
    _spawn(reactor, protocol, argv, cwd=cwd, stdin=False)
    status = await protocol.ended
    if status != 0:
        raise CommandFailed(argv, status, protocol.stderr)
    return b"".join(protocol.out)


@implementer(IBodyProducer)
class ProcessBodyProducer:
    """The stdout of argv as a streaming HTTP request body of unknown length."""

    length = UNKNOWN_LENGTH

    def __init__(self, reactor, argv, progress=None, cwd=None, pause_after_bytes=None,
                 on_fault_pause=None):
        self.reactor = reactor
        self.argv = list(argv)
        self.progress = progress
        self.cwd = cwd
        self.transport = None
        self.bytes = 0
        self.pause_after_bytes = pause_after_bytes
        self.on_fault_pause = on_fault_pause
        self.held = False

    def startProducing(self, consumer):
        producer = self

        class Pipe(_Collect):
            def outReceived(self, data):
                producer.bytes += len(data)
                if producer.progress is not None:
                    producer.progress.add(len(data))
                consumer.write(data)
                limit = producer.pause_after_bytes
                if limit is not None and producer.bytes >= limit and not producer.held:
                    producer.held = True
                    producer.transport.pauseProducing()
                    if producer.on_fault_pause is not None:
                        producer.on_fault_pause(producer)

        protocol = Pipe()
        self.transport = _spawn(self.reactor, protocol, self.argv, cwd=self.cwd, stdin=False)
        finished = defer.Deferred()

        def ended(status):
            if status == 0:
                finished.callback(None)
            else:
                finished.errback(CommandFailed(self.argv, status, protocol.stderr))

        protocol.ended.addCallback(ended)
        return finished

    def pauseProducing(self):
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self):
        if self.transport is not None and not self.held:
            self.transport.resumeProducing()

    def release(self):
        """Undo a fault-injection pause."""
        self.held = False
        self.pause_after_bytes = None
        if self.transport is not None:
            self.transport.resumeProducing()

    def stopProducing(self):
        if self.transport is not None:
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass


@implementer(IPushProducer)
class _NetworkPauser:
    """Registered on the subprocess's stdin: a full pipe pauses the network transport.

    `hold()` pauses it for good (fault injection): later resumes are ignored.
    """

    def __init__(self, transport):
        self.transport = transport
        self.held = False

    def pauseProducing(self):
        self.transport.pauseProducing()

    def resumeProducing(self):
        if not self.held:
            self.transport.resumeProducing()

    def stopProducing(self):
        pass

    def hold(self):
        self.held = True
        self.transport.pauseProducing()

    def release(self):
        self.held = False
        self.transport.resumeProducing()


class _BodySink:
    """The file methods twisted.web calls on Request.content besides write(); a sink
    keeps nothing to read back, and counts what it was given in self.bytes."""

    def seek(self, *args):
        return 0

    def tell(self):
        return self.bytes

    def read(self, *args):
        return b""

    def close(self):
        pass


class ProcessSink(_BodySink):
    """File-like sink for an HTTP request body: bytes go to argv's stdin as they arrive.

    Used as twisted.web Request.content. `finished` fires with the exit status 0 or fails
    with CommandFailed once stdin was closed (close_input) and the process exited.
    """

    def __init__(self, reactor, argv, network_transport, progress=None, cwd=None,
                 pause_after_bytes=None, on_fault_pause=None):
        self.argv = list(argv)
        self.progress = progress
        self.bytes = 0
        self.pause_after_bytes = pause_after_bytes
        self.on_fault_pause = on_fault_pause
        self.protocol = _Collect()
        self.transport = _spawn(reactor, self.protocol, self.argv, cwd=cwd, stdout=True)
        self.pauser = _NetworkPauser(network_transport)
        self.transport.registerProducer(self.pauser, True)
        self.finished = defer.Deferred()
        self._aborted = False
        self._input_closed = False
        self.died_early = False
        self.draining = False
        self.protocol.ended.addCallback(self._ended)

    def _ended(self, status):
        if not self._input_closed and not self._aborted:
            # Exited before the body was complete: a failure (disk full, corrupt stream) or
            # a reader that stops at its end marker (tar before trailing padding). Either
            # way read and drop the rest of the body instead of leaving the connection
            # paused forever.
            self.draining = True
            self.died_early = status != 0
            try:
                self.transport.unregisterProducer()
            except Exception:
                pass
            self.pauser.release()
        if self._aborted:
            self.finished.errback(CommandFailed(self.argv, "aborted", self.protocol.stderr))
        elif status == 0 and not self.died_early:
            self.finished.callback(0)
        else:
            self.finished.errback(CommandFailed(self.argv, status, self.protocol.stderr))

    # The file-like interface twisted.web's Request uses for content.
    def write(self, data):
        if self._aborted:
            return
        self.bytes += len(data)
        if self.draining:
            return
        if self.progress is not None:
            self.progress.add(len(data))
        self.transport.write(data)
        if self.pause_after_bytes is not None and self.bytes >= self.pause_after_bytes:
            if not self.pauser.held:
                self.pauser.hold()
                if self.on_fault_pause is not None:
                    self.on_fault_pause(self)

    def release(self):
        """Undo a fault-injection pause (the pause never comes back for this push)."""
        self.pause_after_bytes = None
        self.pauser.release()

    def close_input(self):
        """The whole body arrived: close stdin so the subprocess can finish."""
        self._input_closed = True
        try:
            self.transport.unregisterProducer()
        except Exception:
            pass
        self.transport.closeStdin()

    def abort(self):
        """The body will not complete: kill the subprocess."""
        if self._aborted:
            return
        self._aborted = True
        self.finished.addErrback(lambda failure: None)     # nobody waits for it now
        try:
            self.transport.signalProcess("KILL")
        except Exception:
            pass


class DiscardSink(_BodySink):
    """A body we refused: read and drop it (counted); past `limit` bytes call on_exceeded
    (the server drops the connection rather than read an endless refused body)."""

    def __init__(self, limit=None, on_exceeded=None):
        self.bytes = 0
        self.limit = limit
        self.on_exceeded = on_exceeded

    def write(self, data):
        self.bytes += len(data)
        if self.limit is not None and self.bytes > self.limit and self.on_exceeded:
            on_exceeded, self.on_exceeded = self.on_exceeded, None
            on_exceeded()

