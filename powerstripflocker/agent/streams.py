"""Streams between subprocesses and HTTP bodies, never buffered whole in memory, and
on plain TCP never passing through Python.

A push is an HTTP PUT with a chunked body: the chunks and the terminating zero-length
chunk are what tell the receiver that the stream is complete (a cut connection leaves a
body without its last chunk, which the receiver discards: the source stays intact and the
push can be made again), and the exit status of tar/btrfs on both ends says whether it
was sound.

ProcessBodyProducer (sending): the stdout of tar -c / btrfs send is a pipe this module
makes (1 MiB). On a plain TCP connection each chunk's bytes go from that pipe to the
socket with splice(2): the size line is written with send(), the bytes follow by splice,
so they never enter Python. Over TLS (splice cannot go through it) the pipe is read in
blocks of up to 1 MiB (what it holds) and written to the transport.

ProcessSink (receiving): the stdin of tar -x / btrfs receive is a pipe this module makes.
A push body on a plain TCP connection is decoded by SplicedChunkedDecoder: chunk size
lines and trailers are read through twisted.web as usual, the bytes of each chunk go from
the socket to the pipe with splice(2). Over TLS twisted.web decodes the body and each
piece is written straight to the pipe.

Everything runs on the reactor, driven by readiness: the pipes are registered with
addReader/addWriter, and the socket's own transport keeps its registration (its doRead or
doWrite is taken over for the duration of the body, as the proxy does for hijacked
streams). A thread per transfer would need a second file descriptor of the socket that
outlives Twisted's close of it, and every progress report, fault pause and cancellation
crossing threads; on the reactor a transfer is a few system calls per MiB and cancels
like any other Deferred. Wake-ups are kept few: sending waits a millisecond before taking
a pipe that holds less than COALESCE_BYTES, and receiving, once the pipe was full, waits
for ROOM_BYTES of room the same way, so one wake-up moves hundreds of KiB instead of one
10 KiB read or write of tar's.

Progress counts bytes and logs "done / total, rate" every few seconds.
"""

import errno
import fcntl
import os
import select
import socket
import struct
import termios

from twisted.internet import defer, main
from twisted.internet.interfaces import IReadDescriptor, ISSLTransport, IWriteDescriptor
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

log = Logger()

PIPE_SIZE = 1 << 20             # the pipes to and from tar/btrfs; also the largest chunk
COALESCE_BYTES = 256 * 1024     # a pipe holding less than this is looked at again...
COALESCE_DELAY = 0.001          # ...after this long (once), so wake-ups move large pieces
ROOM_BYTES = 256 * 1024         # a receiving pipe with less room is looked at again later
FRAMING_READ = 64               # a read for a chunk size line: little of the body with it
MAX_SIZE_LINE = 1024            # twisted.web's limit on a chunk size line, kept

_SPLICE = getattr(os, "splice", None)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032


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


def _pipe():
    """(read end, write end), close-on-exec, as large as PIPE_SIZE where allowed."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass        # above /proc/sys/fs/pipe-max-size: the default size still works
    return read_end, write_end


def _pipe_bytes(fd):
    """How many bytes wait in a pipe (FIONREAD; either end)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def _spawn(reactor, protocol, argv, cwd=None, stdin=None, stdout="r"):
    """Start argv. stdin: None for /dev/null, or a file descriptor the child reads
    (closed here once the child has it). stdout: "r" for the protocol's outReceived, or
    a file descriptor the child writes (closed here the same way)."""
    given = [fd for fd in (stdin, stdout) if isinstance(fd, int)]
    if stdin is None:
        stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        given.append(stdin)
    try:
        return reactor.spawnProcess(protocol, argv[0], list(argv), env=dict(os.environ),
                                    path=cwd, childFDs={0: stdin, 1: stdout, 2: "r"})
    finally:
        for fd in given:
            _close(fd)


async def run(reactor, argv, cwd=None):
    """Run argv to completion; return stdout. Raise CommandFailed on a non-zero exit."""
    class Output(_Collect):
        def __init__(self):
            super().__init__()
            self.out = []

        def outReceived(self, data):
            self.out.append(data)

    protocol = Output()
    _spawn(reactor, protocol, argv, cwd=cwd)
    status = await protocol.ended
    if status != 0:
        raise CommandFailed(argv, status, protocol.stderr)
    return b"".join(protocol.out)


@implementer(IReadDescriptor, IWriteDescriptor)
class _PipeEnd:
    """One end of a pipe as the reactor sees it: readiness goes to ready(), a hang-up
    or error to closed()."""

    def __init__(self, fd, ready, closed):
        self.fd = fd
        self.ready = ready
        self.closed = closed

    def fileno(self):
        return self.fd

    def doRead(self):
        self.ready()

    def doWrite(self):
        self.ready()

    def connectionLost(self, reason):
        self.closed()

    def logPrefix(self):
        return "pipe"


def _queued(transport):
    """Bytes Twisted holds for the transport that have not reached the socket yet."""
    return bool(transport.dataBuffer) or bool(transport._tempDataBuffer)


def spliceable(transport):
    """True when transport is one of Twisted's plain (not TLS) socket connections and
    this kernel has splice(2)."""
    return (_SPLICE is not None and not ISSLTransport.providedBy(transport)
            and isinstance(getattr(transport, "socket", None), socket.socket)
            and hasattr(transport, "_tempDataBuffer"))


@implementer(IBodyProducer)
class ProcessBodyProducer:
    """The stdout of argv as a streaming (chunked) HTTP request body of unknown length.

    pause_after_bytes (fault injection): stop producing after that many bytes and call
    on_fault_pause(self); release() goes on.
    """

    length = UNKNOWN_LENGTH

    def __init__(self, reactor, argv, progress=None, cwd=None, pause_after_bytes=None,
                 on_fault_pause=None):
        self.reactor = reactor
        self.argv = list(argv)
        self.progress = progress
        self.cwd = cwd
        self.bytes = 0
        self.spliced = False          # whether the bytes went by splice(2)
        self.pause_after_bytes = pause_after_bytes
        self.on_fault_pause = on_fault_pause
        self.held = False
        self._paused = False
        self._process = None
        self._protocol = None
        self._pipe = None             # _PipeEnd of stdout's read end, while open
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
        read_end, write_end = _pipe()
        os.set_blocking(read_end, False)
        # a pipe smaller than asked for (pipe-max-size) is still taken in large pieces
        self._coalesce_bytes = min(COALESCE_BYTES, fcntl.fcntl(read_end, _F_GETPIPE_SZ) // 2)
        self._pipe = _PipeEnd(read_end, self._pipe_readable, self._pipe_closed)
        self._protocol = _Collect()
        try:
            self._process = _spawn(self.reactor, self._protocol, self.argv, cwd=self.cwd,
                                   stdout=write_end)
        except BaseException:
            _close(read_end)
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
        if self._transport is not None and _queued(self._transport):
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
        available = _pipe_bytes(self._pipe.fd)
        if not available:
            self._pipe_closed()
            return
        if available < self._coalesce_bytes and not self._coalesced:
            self._stop_reading_pipe()
            self._coalescing = self.reactor.callLater(COALESCE_DELAY, self._look_again)
            return
        self._coalesced = False
        count = self._within_fault_limit(available)
        if self._transport is None:
            self._copy(count)
            return
        self._framing += b"%x\r\n" % count
        self._chunk_left = count
        self._pump()

    def _within_fault_limit(self, count):
        if self.pause_after_bytes is None:
            return count
        return max(1, min(count, self.pause_after_bytes - self.bytes))

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
        limit = self.pause_after_bytes
        if limit is not None and self.bytes >= limit and not self.held:
            self.held = True
            self._stop_reading_pipe()
            if self.on_fault_pause is not None:
                self.on_fault_pause(self)

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
                    moved = _SPLICE(self._pipe.fd, self._socket_fd, self._chunk_left,
                                    flags=_SPLICE_FLAGS)
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
        if _queued(transport):
            why = type(transport).doWrite(transport)
            if why or _queued(transport):
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
            if _queued(transport) and transport.connected:
                transport.startWriting()

    def _close_pipe(self):
        self._stop_reading_pipe()
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            _close(pipe.fd)

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

    def release(self):
        """Undo a fault-injection pause."""
        self.held = False
        self.pause_after_bytes = None
        self.resumeProducing()

    def stopProducing(self):
        self._stopped = True
        self._kill()
        self._release_transport()
        self._close_pipe()


class _NetworkPauser:
    """Pauses the network transport while any reason to pause remains: "pipe" (the
    subprocess's stdin is full) and "fault" (fault injection, until release)."""

    def __init__(self, transport):
        self.transport = transport
        self.reasons = set()

    @property
    def held(self):
        """Whether the network stays paused (a resume of the transport would be wrong)."""
        return bool(self.reasons)

    def pause(self, reason):
        if not self.reasons:
            self.transport.pauseProducing()
        self.reasons.add(reason)

    def resume(self, reason):
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons:
                self.transport.resumeProducing()

    def resume_all(self):
        if self.reasons:
            self.reasons.clear()
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
    """File-like sink for an HTTP request body: bytes go to argv's stdin as they arrive,
    written (write) or spliced there by SplicedChunkedDecoder (splice_target, spliced).

    Used as twisted.web Request.content. `finished` fires with the exit status 0 or fails
    with CommandFailed once stdin was closed (close_input) and the process exited.
    """

    def __init__(self, reactor, argv, network_transport, progress=None, cwd=None,
                 pause_after_bytes=None, on_fault_pause=None):
        self.reactor = reactor
        self.argv = list(argv)
        self.progress = progress
        self.bytes = 0
        self.pause_after_bytes = pause_after_bytes
        self.on_fault_pause = on_fault_pause
        self.protocol = _Collect()
        read_end, write_end = _pipe()
        os.set_blocking(write_end, False)
        self._stdin = _PipeEnd(write_end, self._stdin_writable, self._stdin_broken)
        self._poll = select.poll()
        self._poll.register(write_end, select.POLLOUT)
        capacity = fcntl.fcntl(write_end, _F_GETPIPE_SZ)
        self._capacity = capacity
        self._room_bytes = min(ROOM_BYTES, capacity // 2)    # reachable in a small pipe
        self._pending = []            # bytes written while the pipe was full
        self._writing = False
        self._waiting = None          # the delayed look at a pipe that had little room
        try:
            self.transport = _spawn(reactor, self.protocol, self.argv, cwd=cwd,
                                    stdin=read_end)
        except BaseException:
            _close(write_end)
            raise
        self.pauser = _NetworkPauser(network_transport)
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
        self._check_fault_limit()

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
        if self._capacity - _pipe_bytes(self._stdin.fd) < self._room_bytes:
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
            _close(self._stdin.fd)
            self._stdin.fd = -1

    def _check_fault_limit(self):
        if self.pause_after_bytes is not None and self.bytes >= self.pause_after_bytes:
            if "fault" not in self.pauser.reasons:
                self.pauser.pause("fault")
                if self.on_fault_pause is not None:
                    self.on_fault_pause(self)

    # What SplicedChunkedDecoder asks.
    def splice_target(self):
        """(stdin's fd, at most how many bytes) when bytes may be spliced into stdin
        now, else None (they go through write)."""
        if (self._aborted or self.draining or self._pending or self._input_closed
                or self._stdin.fd < 0 or self.pauser.reasons):
            return None
        limit = PIPE_SIZE
        if self.pause_after_bytes is not None:
            limit = max(1, min(limit, self.pause_after_bytes - self.bytes))
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
        self._check_fault_limit()

    def release(self):
        """Undo a fault-injection pause (the pause never comes back for this push)."""
        self.pause_after_bytes = None
        self.pauser.resume("fault")

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


def splice_request_body(request):
    """Decode request's chunked body with a SplicedChunkedDecoder when it comes over
    plain TCP; True when installed. Call from gotLength, before any body byte."""
    channel = request.channel
    transport = channel.transport
    if not (isinstance(getattr(channel, "_transferDecoder", None),
                       http._ChunkedTransferDecoder) and spliceable(transport)):
        return False
    channel._transferDecoder = SplicedChunkedDecoder(request)
    return True


class SplicedChunkedDecoder:
    """A chunked request body whose chunk bytes go from the socket to the request's
    content by splice(2) whenever the content offers a target (ProcessSink), and through
    twisted.web otherwise.

    It stands in for twisted.web's _ChunkedTransferDecoder (the same checks: size line
    length and digits, CRLF after each chunk, trailer size) and takes over the
    connection's doRead until the last chunk: while a chunk's bytes are due it splices
    them; size lines, CRLFs and trailers are read in FRAMING_READ pieces through the
    channel, which hands them to dataReceived here.
    """

    def __init__(self, request):
        self.request = request
        self.channel = request.channel
        self.transport = request.channel.transport
        self.socket_fd = self.transport.socket.fileno()
        self.state = "SIZE"
        self.length = 0               # bytes of the current chunk still due
        self.buffer = b""
        self.trailer_bytes = 0
        self.spliced = 0
        self.read_size = self.transport.bufferSize
        self.transport.doRead = self.doRead

    def _restore(self):
        self.transport.__dict__.pop("doRead", None)
        self.transport.bufferSize = self.read_size

    def doRead(self):
        """The connection's doRead while the body comes."""
        target = None
        if self.state == "BODY":
            offer = getattr(self.request.content, "splice_target", None)
            target = offer() if offer is not None else None
        if target is None:
            self.transport.bufferSize = FRAMING_READ if self.state != "BODY" else \
                self.read_size
            return type(self.transport).doRead(self.transport)
        fd, limit = target
        try:
            moved = _SPLICE(self.socket_fd, fd, min(self.length, limit), flags=_SPLICE_FLAGS)
        except BlockingIOError:
            self.request.content.stdin_full()
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not moved:
            return main.CONNECTION_DONE
        self.channel.resetTimeout()
        self.length -= moved
        self.spliced += moved
        if not self.length:
            self.state = "CRLF"
        self.request.content.spliced(moved)
        return None

    def dataReceived(self, data):
        self.buffer += data
        while self.buffer and self.state != "FINISHED":
            if not getattr(self, "_" + self.state)():
                break

    def _SIZE(self):
        end = self.buffer.find(b"\r\n")
        if end == -1:
            if len(self.buffer) > MAX_SIZE_LINE:
                raise http._MalformedChunkedDataError("chunk size line too long")
            return False
        line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
        size = line.split(b";", 1)[0].strip()
        if not size or size.lstrip(b"0123456789abcdefABCDEF"):
            raise http._MalformedChunkedDataError("chunk size is not hexadecimal")
        self.length = int(size, 16)
        self.state = "BODY" if self.length else "TRAILER"
        return True

    def _BODY(self):
        data, self.buffer = self.buffer[:self.length], self.buffer[self.length:]
        self.length -= len(data)
        if not self.length:
            self.state = "CRLF"
        self.request.handleContentChunk(data)
        return True

    def _CRLF(self):
        if len(self.buffer) < 2:
            return False
        if self.buffer[:2] != b"\r\n":
            raise http._MalformedChunkedDataError("chunk did not end with CRLF")
        self.buffer = self.buffer[2:]
        self.state = "SIZE"
        return True

    def _TRAILER(self):
        end = self.buffer.find(b"\r\n")
        if end == -1:
            if self.trailer_bytes + len(self.buffer) > 2 ** 16:
                raise http._MalformedChunkedDataError("trailer too long")
            return False
        line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
        self.trailer_bytes += len(line) + 2
        if line:
            return True
        self.state = "FINISHED"
        self._restore()
        rest, self.buffer = self.buffer, b""
        self.channel._finishRequestBody(rest)
        return False


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
