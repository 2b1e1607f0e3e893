"""Addresses for --listen and --docker: docker-style URLs or Twisted endpoint strings.

Accepted forms:

- ``unix:///path/to.sock`` (docker style) or ``unix:/path/to.sock`` (Twisted)
- ``tcp://host:port`` (docker style); a bare ``host:port`` for --docker, as
  DOCKER_HOST allows
- any other Twisted endpoint string for --listen, e.g. ``tcp:2375:interface=127.0.0.1``
"""

import grp
import os
import socket
import stat
from urllib.parse import urlsplit

from twisted.internet.endpoints import (
    HostnameEndpoint, UNIXClientEndpoint, UNIXServerEndpoint, serverFromString,
)


# A burst of docker clients (a script, compose) must not overflow the queue of
# connections not yet accepted; Twisted's default is 50. The kernel caps it at
# net.core.somaxconn.
LISTEN_BACKLOG = 512


class AddressError(ValueError):
    pass


def _unix_path(address):
    if address.startswith("unix://"):
        path = address[len("unix://"):]
    elif address.startswith("unix:"):
        path = address[len("unix:"):]
    else:
        return None
    if not path.startswith("/"):
        raise AddressError(f"{address!r}: a unix socket path must be absolute")
    return path


def _tcp(address):
    if address.startswith("tcp://"):
        parts = urlsplit(address)
        if not parts.hostname or not parts.port:
            raise AddressError(f"{address!r}: expected tcp://HOST:PORT")
        return parts.hostname, parts.port
    return None


def client_endpoint(reactor, address):
    """An IStreamClientEndpoint for the Docker daemon, and a description of it."""
    path = _unix_path(address)
    if path is not None:
        return UNIXClientEndpoint(reactor, path, timeout=10), f"unix://{path}"
    tcp = _tcp(address)
    if tcp is None and "://" not in address and address.count(":") == 1:
        host, _, port = address.partition(":")
        if port.isdigit():
            tcp = (host or "127.0.0.1", int(port))
    if tcp is None:
        raise AddressError(
            f"{address!r}: the Docker daemon address must be unix:///path or tcp://host:port"
        )
    host, port = tcp
    return HostnameEndpoint(reactor, host, port, timeout=10), f"tcp://{host}:{port}"


def unix_socket_in_use(path):
    """True when something accepts connections on the unix socket at path."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


class ListenAddress:
    """Where the proxy listens; for a unix socket also its path."""

    def __init__(self, reactor, address):
        self.address = address
        self.path = _unix_path(address)
        if self.path is not None:
            self.endpoint = UNIXServerEndpoint(
                reactor, self.path, backlog=LISTEN_BACKLOG, mode=0o660)
            self.description = f"unix://{self.path}"
            return
        tcp = _tcp(address)
        if tcp is not None:
            host, port = tcp
            self.endpoint = serverFromString(
                reactor, f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}"
                         f":backlog={LISTEN_BACKLOG}")
            self.description = f"tcp://{host}:{port}"
            return
        try:
            self.endpoint = serverFromString(reactor, address)
        except (ValueError, KeyError, TypeError) as e:
            raise AddressError(f"{address!r}: not a listen address ({e})")
        self.description = address

    def prepare(self):
        """Remove a stale socket file left by a dead proxy; refuse a live one."""
        if self.path is None or not os.path.lexists(self.path):
            return
        if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
            raise AddressError(f"{self.path} exists and is not a socket")
        if unix_socket_in_use(self.path):
            raise AddressError(f"{self.path} is in use by another server")
        os.unlink(self.path)

    def secure(self, group="docker"):
        """Mode 0660 and, when the group exists, that group (like dockerd's socket)."""
        if self.path is None:
            return None
        os.chmod(self.path, 0o660)
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            return None
        os.chown(self.path, -1, gid)
        return group

    def cleanup(self):
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
