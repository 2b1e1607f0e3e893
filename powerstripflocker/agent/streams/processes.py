"""Running the tools a stream is made by (tar, btrfs): their exit status and stderr,
and the short cause of a failure."""

import errno
import os

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol

from powerstripflocker.agent.streams.kernel import close_quietly


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


class Collect(ProcessProtocol):
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



def spawn(reactor, protocol, argv, cwd=None, stdin=None, stdout="r"):
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
            close_quietly(fd)


async def run(reactor, argv, cwd=None):
    """Run argv to completion; return stdout. Raise CommandFailed on a non-zero exit."""
    class Output(Collect):
        def __init__(self):
            super().__init__()
            self.out = []

        def outReceived(self, data):
            self.out.append(data)

    protocol = Output()
    spawn(reactor, protocol, argv, cwd=cwd)
    status = await protocol.ended
    if status != 0:
        raise CommandFailed(argv, status, protocol.stderr)
    return b"".join(protocol.out)

