"""Sending: a subprocess's stdout as a chunked HTTP request body, spliced straight
into the socket on plain TCP and read through Python over TLS."""

import errno
import fcntl
import os

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from powerstripflocker.agent.streams.kernel import (
    COALESCE_BYTES, COALESCE_DELAY, F_GETPIPE_SZ, SPLICE, SPLICE_FLAGS, PipeEnd, close_quietly,
    make_pipe, pipe_bytes, queued, spliceable)
from powerstripflocker.agent.streams.processes import CommandFailed, Collect, spawn


@implementer(IBodyProducer)
class ProcessBodyProducer:
    """The stdout of argv as a streaming (chunked) HTTP request body of unknown length.

    hold_after(count, on_held) stops it after exactly count bytes and calls on_held(self);
    release() lets it go on (the fault points use it).
    """

    length = UNKNOWN_LENGTH

    def __init__(self, reactor, argv, progress=None, cwd=None):
        self.reactor = reactor
        self.argv = list(argv)
        self.progress = progress
        self.cwd = cwd
        self.bytes = 0
        self.spliced = False          # whether the bytes went by splice(2)
        self.hold_at = None           # hold_after: the byte to stop at
        self.on_held = None
        self.held = False
        self._paused = False
        self._process = None
        self._protocol = None
        self._pipe = None             # PipeEnd of stdout's read end, while open
        self._reading = False
        self._coalescing = None       # the delayed look at a pipe that held little
        self._coalesced = False
        self._finished = None
        self._transport = None        # splicing: the TCP transport, its doWrite ours
        self._socket_fd = -1
        self._chunk_left = 0          # bytes of the current chunk still in the pipe
        self._framing = b""           # size line / CRLF to send before more of the body
        self._waiting_for_socket = False
        self._eof = False
        self._done = False
        self._stopped = False         # stopProducing: finished must never fire then
        self._exit_status = None

    def startProducing(self, consumer):
        read_end, write_end = make_pipe()
        os.set_blocking(read_end, False)
        # a pipe smaller than asked for (pipe-max-size) is still taken in large pieces
        self._coalesce_bytes = min(COALESCE_BYTES, fcntl.fcntl(read_end, F_GETPIPE_SZ) // 2)
        self._pipe = PipeEnd(read_end, self._pipe_readable, self._pipe_closed)
        self._protocol = Collect()
        try:
            self._process = spawn(self.reactor, self._protocol, self.argv, cwd=self.cwd,
                                   stdout=write_end)
        except BaseException:
            close_quietly(read_end)
            raise
        self._consumer = consumer
        transport = getattr(consumer, "transport", None)
        if spliceable(transport):
            self.spliced = True
            self._transport = transport
            self._socket_fd = transport.socket.fileno()
            transport.doWrite = self._socket_writable
        self._finished = defer.Deferred()
        self._protocol.ended.addCallback(self._process_ended)
        if self._transport is not None and queued(self._transport):
            self._wait_for_socket()     # the request head goes first
        else:
            self._read_pipe()
        return self._finished

    # reading the pipe

    def _read_pipe(self):
        if (not self._reading and self._pipe is not None and not self._paused
                and not self.held and not self._waiting_for_socket):
            self._reading = True
            self.reactor.addReader(self._pipe)

    def _stop_reading_pipe(self):
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self._pipe)
        if self._coalescing is not None and self._coalescing.active():
            self._coalescing.cancel()
        self._coalescing = None

    def _look_again(self):
        self._coalescing = None
        self._coalesced = True
        self._read_pipe()

    def _pipe_readable(self):
        available = pipe_bytes(self._pipe.fd)
        if not available:
            self._pipe_closed()
            return
        if available < self._coalesce_bytes and not self._coalesced:
            self._stop_reading_pipe()
            self._coalescing = self.reactor.callLater(COALESCE_DELAY, self._look_again)
            return
        self._coalesced = False
        count = self._within_hold(available)
        if self._transport is None:
            self._copy(count)
            return
        self._framing += b"%x\r\n" % count
        self._chunk_left = count
        self._pump()

    def _within_hold(self, count):
        if self.hold_at is None:
            return count
        return max(1, min(count, self.hold_at - self.bytes))

    def _copy(self, count):
        try:
            data = os.read(self._pipe.fd, count)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._pipe_closed()
            return
        self._count(len(data))
        self._consumer.write(data)

    def _count(self, count):
        self.bytes += count
        if self.progress is not None:
            self.progress.add(count)
        limit = self.hold_at
        if limit is not None and self.bytes >= limit and not self.held:
            self.held = True
            self._stop_reading_pipe()
            if self.on_held is not None:
                self.on_held(self)

    # splicing to the socket

    def _pump(self):
        """Send the framing and splice the current chunk until done or the socket is
        full; then wait for the pipe (or the socket)."""
        while self._framing or self._chunk_left:
            try:
                if self._framing:
                    sent = os.write(self._socket_fd, self._framing)
                    self._framing = self._framing[sent:]
                else:
                    moved = SPLICE(self._pipe.fd, self._socket_fd, self._chunk_left,
                                    flags=SPLICE_FLAGS)
                    if not moved:
                        raise OSError(errno.EPIPE, "the stream's pipe ended mid-chunk")
                    self._chunk_left -= moved
                    if not self._chunk_left:
                        self._framing = b"\r\n"
                    self._count(moved)
                    if not self._chunk_left and not self._eof:
                        break       # the CRLF goes with the next size line
            except BlockingIOError:
                self._wait_for_socket()
                return
            except OSError as e:
                self._fail(e)
                return
        if self._eof:
            self._end()
        else:
            self._read_pipe()

    def _wait_for_socket(self):
        self._stop_reading_pipe()
        self._waiting_for_socket = True
        self._transport.startWriting()

    def _socket_writable(self):
        """The transport's doWrite while this body is spliced."""
        transport = self._transport
        if queued(transport):
            why = type(transport).doWrite(transport)
            if why or queued(transport):
                return why
        transport.stopWriting()
        self._waiting_for_socket = False
        if self.held or self._paused:
            return None
        if self._eof or self._framing or self._chunk_left:
            self._pump()
        else:
            self._read_pipe()
        return None

    # the end

    def _pipe_closed(self):
        if self._eof:
            return
        self._eof = True
        self._stop_reading_pipe()
        if self._transport is not None and self._framing and not self._waiting_for_socket:
            self._pump()
        elif not self._waiting_for_socket:
            self._end()

    def _end(self):
        """Stdout is at its end and every byte is out: close up; finished fires once the
        process has exited too."""
        self._release_transport()
        self._close_pipe()
        self._done = True
        self._maybe_finish()

    def _process_ended(self, status):
        self._exit_status = status
        self._maybe_finish()

    def _maybe_finish(self):
        if (not self._done or self._exit_status is None or self._finished.called
                or self._stopped):
            return
        if self._exit_status == 0:
            self._finished.callback(None)
        else:
            self._finished.errback(CommandFailed(self.argv, self._exit_status,
                                                 self._protocol.stderr))

    def _fail(self, error):
        self._kill()
        self._release_transport()
        self._close_pipe()
        if not self._finished.called and not self._stopped:
            self._finished.errback(Failure(error))

    def _release_transport(self):
        transport, self._transport = self._transport, None
        if transport is not None:
            if self._waiting_for_socket:
                transport.stopWriting()
                self._waiting_for_socket = False
            transport.__dict__.pop("doWrite", None)
            if queued(transport) and transport.connected:
                transport.startWriting()

    def _close_pipe(self):
        self._stop_reading_pipe()
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            close_quietly(pipe.fd)

    def _kill(self):
        if self._process is not None and not self._protocol.ended.called:
            try:
                self._process.signalProcess("KILL")
            except Exception:
                pass

    # IPushProducer (the transport's backpressure; splicing never fills its buffer)

    def pauseProducing(self):
        self._paused = True
        self._stop_reading_pipe()

    def resumeProducing(self):
        self._paused = False
        if not self._waiting_for_socket:
            if self._framing or self._chunk_left:
                self._pump()
            else:
                self._read_pipe()

    def hold_after(self, count, on_held=None):
        """Stop producing once count bytes went out and call on_held(self)."""
        self.hold_at = count
        self.on_held = on_held

    def release(self):
        """Go on after a hold."""
        self.held = False
        self.hold_at = None
        self.resumeProducing()

    def stopProducing(self):
        self._stopped = True
        self._kill()
        self._release_transport()
        self._close_pipe()

