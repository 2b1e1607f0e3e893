"""The kernel pieces the streams are made of: pipes (sized, measured), splice(2), and
the reactor's view of a pipe end."""

import fcntl
import os
import socket
import struct
import termios

from twisted.internet.interfaces import IReadDescriptor, ISSLTransport, IWriteDescriptor
from zope.interface import implementer

PIPE_SIZE = 1 << 20             # the pipes to and from tar/btrfs; also the largest chunk
COALESCE_BYTES = 256 * 1024     # a pipe holding less than this is looked at again...
COALESCE_DELAY = 0.001          # ...after this long (once), so wake-ups move large pieces
ROOM_BYTES = 256 * 1024         # a receiving pipe with less room is looked at again later

SPLICE = getattr(os, "splice", None)
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032


def make_pipe():
    """(read end, write end), close-on-exec, as large as PIPE_SIZE where allowed."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass        # above /proc/sys/fs/pipe-max-size: the default size still works
    return read_end, write_end


def pipe_bytes(fd):
    """How many bytes wait in a pipe (FIONREAD; either end)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def close_quietly(fd):
    try:
        os.close(fd)
    except OSError:
        pass



@implementer(IReadDescriptor, IWriteDescriptor)
class PipeEnd:
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


def queued(transport):
    """Bytes Twisted holds for the transport that have not reached the socket yet."""
    return bool(transport.dataBuffer) or bool(transport._tempDataBuffer)


def spliceable(transport):
    """True when transport is one of Twisted's plain (not TLS) socket connections and
    this kernel has splice(2)."""
    return (SPLICE is not None and not ISSLTransport.providedBy(transport)
            and isinstance(getattr(transport, "socket", None), socket.socket)
            and hasattr(transport, "_tempDataBuffer"))


