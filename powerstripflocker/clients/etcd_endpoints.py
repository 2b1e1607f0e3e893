"""etcd endpoint lists (etcd://h1:2379,h2:2379/prefix, etcds:// for TLS): the members a
client goes through in turn and the key prefix everything lives under."""

import re
from dataclasses import dataclass

from powerstripflocker.clients.etcd import DEFAULT_PORT, BadEndpoint

@dataclass(frozen=True)
class EtcdEndpoints:
    """A parsed etcd:// or etcds:// endpoint list."""

    members: tuple  # ((host, port), ...) in the order given
    prefix: str = ""  # "" or "a/b": keys live under "/a/b/"
    tls: bool = False

    @property
    def urls(self):
        scheme = "https" if self.tls else "http"
        return tuple(f"{scheme}://{_netloc(host, port)}" for host, port in self.members)

    @property
    def namespace(self):
        """The bytes every key is stored under."""
        return f"/{self.prefix}/".encode() if self.prefix else b""

    def __str__(self):
        scheme = "etcds" if self.tls else "etcd"
        members = ",".join(_netloc(host, port) for host, port in self.members)
        return f"{scheme}://{members}" + (f"/{self.prefix}" if self.prefix else "")


def _netloc(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?\Z")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+\Z")


def parse_endpoints(text):
    """etcd://HOST[:PORT][,HOST[:PORT]...][/PREFIX] (etcds:// for TLS) -> EtcdEndpoints.

    PORT defaults to 2379. HOST is a name, an IPv4 address or a bracketed IPv6 one.
    PREFIX is one or more /-separated segments of letters, digits, "_", "." and "-".
    Raises BadEndpoint naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise BadEndpoint("empty etcd endpoint: give etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
    text = text.strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise BadEndpoint(f"{text!r} is not an etcd endpoint list: it must start with "
                          "etcd:// or etcds://")
    if scheme not in ("etcd", "etcds"):
        raise BadEndpoint(f"{text!r}: unknown scheme {scheme!r}, use etcd:// or etcds:// "
                          "(for TLS)")
    if "?" in rest or "#" in rest:
        raise BadEndpoint(f"{text!r}: an etcd endpoint list takes no query or fragment")
    members_text, slash, prefix_text = rest.partition("/")
    if "@" in members_text:
        raise BadEndpoint(f"{text!r}: credentials in the URL are not supported; "
                          "use etcds:// with a client certificate")
    if not members_text:
        raise BadEndpoint(f"{text!r} names no etcd member")
    members = []
    for item in members_text.split(","):
        member = _parse_member(text, item)
        if member in members:
            raise BadEndpoint(f"{text!r} names {_netloc(*member)} twice")
        members.append(member)
    prefix = prefix_text.rstrip("/")
    if slash and prefix:
        for segment in prefix.split("/"):
            if segment in ("", ".", "..") or not _PREFIX_SEGMENT.match(segment):
                raise BadEndpoint(f"{text!r}: bad prefix {prefix_text!r}: segments are "
                                  "letters, digits, '_', '.' and '-', not empty, '.' or '..'")
    return EtcdEndpoints(tuple(members), prefix, scheme == "etcds")


def _parse_member(text, item):
    item = item.strip()
    if not item:
        raise BadEndpoint(f"{text!r} has an empty member (two commas, or one at an end)")
    if item.startswith("["):
        host, bracket, after = item[1:].partition("]")
        if not bracket or not host or ":" not in host:
            raise BadEndpoint(f"{text!r}: bad IPv6 member {item!r}: write [ADDRESS]:PORT")
        if after and not after.startswith(":"):
            raise BadEndpoint(f"{text!r}: bad member {item!r}: expected ':PORT' after ']'")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text = item.partition(":")
        if not colon:
            port_text = None
        if not host:
            raise BadEndpoint(f"{text!r}: member {item!r} has no host")
        if port_text and ":" in port_text:
            raise BadEndpoint(f"{text!r}: bad member {item!r}: put an IPv6 address in "
                              "brackets, [ADDRESS]:PORT")
        if not _HOSTNAME.match(host):
            raise BadEndpoint(f"{text!r}: bad host {host!r} in member {item!r}")
    if port_text is None:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadEndpoint(f"{text!r}: bad port {port_text!r} in member {item!r}: "
                          "expected 1-65535")
    return host, int(port_text)
