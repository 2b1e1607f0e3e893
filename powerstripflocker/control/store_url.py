"""Store URLs: where the control service keeps its configuration.

    sqlite:///PATH                              one SQLite file (what --db PATH means)
    etcd://HOST:PORT[,HOST:PORT...][/PREFIX]    an etcd cluster, keys under /PREFIX/
    etcds://...                                 the same over TLS (CA, certificate and
                                                key given as separate files)

parse_store_url is pure: it reads no file and opens no connection.
"""

from dataclasses import dataclass

from powerstripflocker.clients.etcd import BadEndpoint
from powerstripflocker.clients.etcd_client import TLSFiles
from powerstripflocker.clients.etcd_endpoints import EtcdEndpoints, parse_endpoints

FORMS = "sqlite:///PATH, etcd://HOST:PORT[,HOST:PORT...][/PREFIX] or etcds://..."


class BadStoreURL(ValueError):
    """A store URL (or its TLS files) that cannot work; the message says why."""


@dataclass(frozen=True)
class SQLiteURL:
    path: str  # absolute

    def __str__(self):
        return f"sqlite://{self.path}"


@dataclass(frozen=True)
class EtcdURL:
    endpoints: EtcdEndpoints

    def __str__(self):
        return str(self.endpoints)


def parse_store_url(text):
    """SQLiteURL or EtcdURL for text; BadStoreURL naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise BadStoreURL(f"empty store URL: give {FORMS}")
    text = text.strip()
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise BadStoreURL(f"{text!r} is not a store URL: give {FORMS}")
    if scheme in ("etcd", "etcds"):
        try:
            return EtcdURL(parse_endpoints(text))
        except BadEndpoint as error:
            raise BadStoreURL(str(error)) from None
    if scheme != "sqlite":
        raise BadStoreURL(f"{text!r}: unknown scheme {scheme!r}: give {FORMS}")
    return SQLiteURL(_sqlite_path(text, rest))


def _sqlite_path(text, rest):
    if "?" in rest or "#" in rest:
        raise BadStoreURL(f"{text!r}: a sqlite URL takes no query or fragment")
    if not rest.startswith("/"):
        host = rest.partition("/")[0]
        raise BadStoreURL(f"{text!r}: a sqlite URL names no host ({host!r}): write "
                          "sqlite:///PATH with three slashes and an absolute PATH")
    if rest == "/":
        raise BadStoreURL(f"{text!r} names no database file: write sqlite:///PATH")
    if rest.endswith("/"):
        raise BadStoreURL(f"{text!r} names a directory, not a database file")
    if "\0" in rest:
        raise BadStoreURL(f"{text!r}: a path cannot hold a NUL character")
    return rest


def etcd_tls_files(url, ca=None, cert=None, key=None, option="--store"):
    """TLSFiles for an etcds:// URL (None for etcd:// without files, or a SQLite URL);
    BadStoreURL for files given to a store that takes none, or a certificate without
    its key. option names the options in the message (--store: --store-ca, ...)."""
    given = [name for name, path in (("ca", ca), ("cert", cert), ("key", key)) if path]
    if not (isinstance(url, EtcdURL) and url.endpoints.tls):
        if given:
            names = ", ".join(f"{option}-{name}" for name in given)
            raise BadStoreURL(f"{names} given, but {url} is not etcds:// (TLS)")
        return None
    if bool(cert) != bool(key):
        raise BadStoreURL(f"{option}-cert and {option}-key go together")
    if cert and not ca:
        raise BadStoreURL(f"{option}-cert needs {option}-ca (the CA of etcd's members)")
    return TLSFiles(ca, cert, key)
