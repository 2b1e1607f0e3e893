"""Receiving: an HTTP request body into a subprocess's stdin, written as it arrives
or spliced there by SplicedChunkedDecoder, the network paused while the pipe is full."""

import fcntl
import os
import select

from twisted.internet import defer

from powerstripflocker.agent.streams import kernel
from powerstripflocker.agent.streams.kernel import (
    COALESCE_DELAY, F_GETPIPE_SZ, ROOM_BYTES, PipeEnd, close_quietly, make_pipe, pipe_bytes)
from powerstripflocker.agent.streams.processes import CommandFailed, Collect, spawn
from powerstripflocker.serving.flow import Flow


class BodySink:
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


class ProcessSink(BodySink):
    """File-like sink for an HTTP request body: bytes go to argv's stdin as they arrive,
    written (write) or spliced there by SplicedChunkedDecoder (splice_target, spliced).

    Used as twisted.web Request.content. `finished` fires with the exit status 0 or fails
    with CommandFailed once stdin was closed (close_input) and the process exited.
    """

    def __init__(self, reactor, argv, network_transport, progress=None, cwd=None):
        self.reactor = reactor
        self.argv = list(argv)
        self.progress = progress
        self.bytes = 0
        self.hold_at = None           # hold_after: the byte to stop reading at
        self.on_held = None
        self.protocol = Collect()
        read_end, write_end = make_pipe()
        os.set_blocking(write_end, False)
        self._stdin = PipeEnd(write_end, self._stdin_writable, self._stdin_broken)
        self._poll = select.poll()
        self._poll.register(write_end, select.POLLOUT)
        capacity = fcntl.fcntl(write_end, F_GETPIPE_SZ)
        self._capacity = capacity
        self._room_bytes = min(ROOM_BYTES, capacity // 2)    # reachable in a small pipe
        self._pending = []            # bytes written while the pipe was full
        self._writing = False
        self._waiting = None          # the delayed look at a pipe that had little room
        try:
            self.transport = spawn(reactor, self.protocol, self.argv, cwd=cwd,
                                    stdin=read_end)
        except BaseException:
            close_quietly(write_end)
            raise
        # Reasons: "pipe" (the subprocess's stdin is full), "hold" (hold_after, until
        # release).
        self.pauser = Flow(network_transport)
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
            self._close_stdin()
            self.pauser.resume_all()
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
        if self._pending:
            self._pending.append(data)
        else:
            self._write_out(data)
        self._check_hold()

    def _write_out(self, data):
        try:
            written = os.write(self._stdin.fd, data)
        except BlockingIOError:
            written = 0
        except OSError:
            self._stdin_broken()
            return
        if written < len(data):
            self._pending.append(data[written:])
            self._wait_for_stdin()

    def _wait_for_stdin(self):
        self.pauser.pause("pipe")
        if not self._writing and self._waiting is None:
            self._writing = True
            self.reactor.addWriter(self._stdin)

    def _stdin_writable(self):
        if self._capacity - pipe_bytes(self._stdin.fd) < self._room_bytes:
            # Writable as soon as the reader took one page: wait for room for a large
            # piece instead of waking up for every read of tar's.
            self._writing = False
            self.reactor.removeWriter(self._stdin)
            self._waiting = self.reactor.callLater(COALESCE_DELAY, self._look_again)
            return
        while self._pending:
            data = self._pending.pop(0)
            try:
                written = os.write(self._stdin.fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                self._stdin_broken()
                return
            if written < len(data):
                self._pending.insert(0, data[written:])
                return
        self._writing = False
        self.reactor.removeWriter(self._stdin)
        if self._input_closed:
            self._close_stdin()
        self.pauser.resume("pipe")

    def _look_again(self):
        self._waiting = None
        if self._stdin.fd >= 0 and not self._writing:
            self._writing = True
            self.reactor.addWriter(self._stdin)

    def _stdin_broken(self):
        """The subprocess closed its stdin (it exited): the rest of the body is
        dropped; _ended decides what that means."""
        self._pending = []
        self._close_stdin()

    def _close_stdin(self):
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
        self._waiting = None
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self._stdin)
        if self._stdin.fd >= 0:
            self._poll.unregister(self._stdin.fd)
            close_quietly(self._stdin.fd)
            self._stdin.fd = -1

    def _check_hold(self):
        if self.hold_at is not None and self.bytes >= self.hold_at:
            if "hold" not in self.pauser.reasons:
                self.pauser.pause("hold")
                if self.on_held is not None:
                    self.on_held(self)

    # What SplicedChunkedDecoder asks.
    def splice_target(self):
        """(stdin's fd, at most how many bytes) when bytes may be spliced into stdin
        now, else None (they go through write)."""
        if (self._aborted or self.draining or self._pending or self._input_closed
                or self._stdin.fd < 0 or self.pauser.reasons):
            return None
        limit = kernel.PIPE_SIZE
        if self.hold_at is not None:
            limit = max(1, min(limit, self.hold_at - self.bytes))
        return self._stdin.fd, limit

    def stdin_full(self):
        """True (and the network paused until stdin can take more) when a splice found
        no room in stdin; False when it found nothing to read on the socket."""
        if self._poll.poll(0):
            return False
        self._wait_for_stdin()
        return True

    def spliced(self, count):
        self.bytes += count
        if self.progress is not None:
            self.progress.add(count)
        self._check_hold()

    def hold_after(self, count, on_held=None):
        """Stop reading the network once count bytes arrived and call on_held(self)."""
        self.hold_at = count
        self.on_held = on_held

    def release(self):
        """Go on after a hold (it never comes back for this body)."""
        self.hold_at = None
        self.pauser.resume("hold")

    def close_input(self):
        """The whole body arrived: close stdin (once what is pending is in) so the
        subprocess can finish."""
        self._input_closed = True
        if not self._pending:
            self._close_stdin()

    def abort(self):
        """The body will not complete: kill the subprocess."""
        if self._aborted:
            return
        self._aborted = True
        self.finished.addErrback(lambda failure: None)     # nobody waits for it now
        self._pending = []
        self._close_stdin()
        try:
            self.transport.signalProcess("KILL")
        except Exception:
            pass



class DiscardSink(BodySink):
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
