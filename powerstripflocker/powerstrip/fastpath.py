"""How the proxy's two connections move bytes: the fast path, or the plain Twisted relay.

The fast path is one switch (ProxyFactory(fast_path=...), ``proxy --no-fast-path``)
over three tunings that reach into Twisted's private transport attributes:

- writes try the socket at once when nothing is queued (transport.write only
  queues, and the bytes leave a reactor turn and two system calls later: on a
  request/response relay that is most of the proxy's added latency);
- unix sockets are read with recv(), not the recvmsg() Twisted uses to accept
  file descriptors the proxy never passes, in 256 KiB pieces instead of 64 KiB;
- a hijacked stream (attach, exec) moves socket to socket through a pipe with
  splice(2), so its bytes never enter Python.

Each one falls back to the public API where a transport lacks what it needs.
With the switch off (PlainRelay), every byte goes through transport.write and
Twisted's own reads: slower, and independent of Twisted's internals.
"""

import fcntl
import os
import socket
import types

from twisted.internet import main, tcp, unix

READ_SIZE = 256 * 1024
PIPE_SIZE = 1024 * 1024
_SPLICE = getattr(os, "splice", None)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = 1031


def transport_io(fast_path):
    """The FastPath, or the PlainRelay when fast_path is false."""
    return FastPath() if fast_path else PlainRelay()


class PlainRelay:
    """Twisted's public transport API only."""

    def tune(self, transport):
        """Prepare a new connection's transport; returns the function that writes to it."""
        no_delay(transport)
        return transport.write

    def splice(self, client_transport, daemon_transport):
        """Kernel relays for a hijacked pair (none here); each has close()."""
        return []


class FastPath:
    """Direct socket writes, plain unix reads, splice(2) for hijacked streams."""

    def tune(self, transport):
        no_delay(transport)
        _plain_reads(transport)
        if _socket_transport(transport):
            return lambda data: _write_now(transport, data)
        return transport.write

    def splice(self, client_transport, daemon_transport):
        return kernel_relays(client_transport, daemon_transport)


def no_delay(transport):
    """Small writes (heads, stream frames) must not wait for Nagle on TCP."""
    sock = getattr(transport, "socket", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            transport.setTcpNoDelay(True)
        except OSError:
            pass


def _socket_transport(transport):
    return hasattr(transport, "socket") and hasattr(transport, "_tempDataBuffer")


def _write_blocked(transport):
    """Whether bytes are queued in Twisted, or the transport no longer takes writes."""
    return (transport._tempDataBuffer or transport.dataBuffer
            or not transport.connected or transport.disconnecting
            or transport._writeDisconnecting or transport._writeDisconnected)


def _write_now(transport, data):
    """Send at once when nothing is queued, else queue behind what is."""
    if not _write_blocked(transport):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # transport.write will meet the same error and close properly
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _plain_reads(transport):
    transport.bufferSize = READ_SIZE
    if isinstance(transport, unix.Server) or isinstance(transport, unix.Client):
        transport.doRead = types.MethodType(tcp.Connection.doRead, transport)


class _KernelRelay:
    """Moves a hijacked stream from one socket to the other through a pipe with
    splice(2).

    It takes over the source transport's doRead; pausing the source (Twisted's
    stopReading, driven by the usual producer backpressure) still works. When
    the destination cannot take more, or has bytes queued in Twisted, what is
    in the pipe is read out and handed to transport.write, which queues it and
    pauses the source: order and backpressure are kept.
    """

    def __init__(self, source, destination):
        self.source, self.destination = source, destination
        self.source_fd = source.socket.fileno()
        self.destination_fd = destination.socket.fileno()
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.write_end, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass
        self.pending = 0
        source.doRead = self.doRead

    def doRead(self):
        try:
            moved = _SPLICE(self.source_fd, self.write_end, PIPE_SIZE, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not moved:
            return main.CONNECTION_DONE
        self.pending += moved
        self._flush()
        return None

    def _flush(self):
        destination = self.destination
        while self.pending and not _write_blocked(destination):
            try:
                sent = _SPLICE(self.read_end, self.destination_fd, self.pending,
                               flags=_SPLICE_FLAGS)
            except OSError:
                break  # full (EAGAIN) or broken: Twisted's write path takes over
            self.pending -= sent
        while self.pending:
            data = os.read(self.read_end, self.pending)
            self.pending -= len(data)
            destination.write(data)

    def close(self):
        for fd in (self.read_end, self.write_end):
            try:
                os.close(fd)
            except OSError:
                pass
        self.read_end = self.write_end = -1


def kernel_relays(client, daemon):
    """Both directions of a hijacked connection through splice(2), where possible."""
    if _SPLICE is None or not (_socket_transport(client) and _socket_transport(daemon)):
        return []
    try:
        return [_KernelRelay(daemon, client), _KernelRelay(client, daemon)]
    except OSError:
        return []
