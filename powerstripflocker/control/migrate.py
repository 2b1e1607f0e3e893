"""powerstrip-flocker control migrate: a SQLite cluster's store copied into etcd.

What is copied is everything IStore holds: the datasets (metadata, primary, maximum
size, deleted flag, manifested flag, origin, generation) oldest first, the leases
(expiry and claim), and the node reports with when they came. The copy goes through
IAsyncStore into an empty target, then is read back and compared with the source.
"""

import os
import sqlite3
import sys
from dataclasses import dataclass

from powerstripflocker.clients.etcd import EtcdError
from powerstripflocker.clients.etcd_client import EtcdClient
from powerstripflocker.control.etcdstore import EtcdStore
from powerstripflocker.control.store import SQLiteStore, configuration_tag_of
from powerstripflocker.control.store_url import (
    BadStoreURL, EtcdURL, SQLiteURL, etcd_tls_files, parse_store_url,
)
from powerstripflocker.serving.lifecycle import run_reactor

HELP = ("copy a control service's store (--from sqlite:///PATH) into an empty etcd "
        "(--to etcd://...), then verify the copy")

# Leases and node reports per etcd transaction (etcd takes at most 128 operations).
BATCH = 100
# A progress line every so many datasets.
PROGRESS_EVERY = 100


class MigrationError(Exception):
    """The migration cannot go on or its copy is not the source; the message says why."""


@dataclass(frozen=True)
class Contents:
    """Everything a store holds, in its stable order."""

    datasets: list
    leases: list
    node_reports: list  # [(node_uuid, report, received)]

    @property
    def tag(self):
        return configuration_tag_of(self.datasets, self.leases)

    def counts(self):
        return (f"{len(self.datasets)} datasets, {len(self.leases)} leases, "
                f"{len(self.node_reports)} node reports")


def read_source(store):
    """The Contents of a synchronous IStore, read in one transaction."""
    with store.transaction():
        return Contents(store.datasets(), store.leases(), store.node_reports())


async def read_target(store):
    """The Contents of an IAsyncStore."""
    return Contents(await store.datasets(), await store.leases(), await store.node_reports())


def first_difference(source, copy):
    """A sentence naming the first way copy differs from source (Contents), or None."""
    for what, ours, theirs, name in (
            ("dataset", source.datasets, copy.datasets, lambda d: d.dataset_id),
            ("lease", source.leases, copy.leases, lambda l: l.dataset_id),
            ("node report", source.node_reports, copy.node_reports, lambda r: r[0])):
        for index, (expected, found) in enumerate(zip(ours, theirs)):
            if expected != found:
                return (f"{what} {index + 1} differs: the source has {expected!r}, "
                        f"the target {found!r}")
        if len(ours) != len(theirs):
            longer, where = (ours, "source") if len(ours) > len(theirs) else (theirs, "target")
            extra = longer[min(len(ours), len(theirs))]
            return (f"{len(ours)} {what}s in the source, {len(theirs)} in the target: "
                    f"the first extra one, {name(extra)}, is in the {where}")
    return None


async def migrate(source, target, say=lambda line: None):
    """Copy what the IStore source holds into the empty IAsyncStore target and verify
    the copy; returns the Contents copied. MigrationError when the target is not empty (nothing
    is written then) or the copy read back differs (naming the first difference)."""
    contents = read_source(source)
    say(f"source: {contents.counts()}")
    if not await target.is_empty():
        raise MigrationError("the target is not empty: migrate writes only into an empty "
                             "store (a fresh etcd prefix); nothing was written")
    total = len(contents.datasets)
    for number, dataset in enumerate(contents.datasets, 1):
        # One transaction each: datasets written in one etcd transaction share a
        # create revision, which is their order ("oldest first").
        await target.decide(lambda view, dataset=dataset: view.import_dataset(dataset))
        if number % PROGRESS_EVERY == 0 or number == total:
            say(f"datasets: {number}/{total} copied")
    await _in_batches(target, contents.leases, "leases", say,
                      lambda view, lease: view.put_lease(lease))
    await _in_batches(target, contents.node_reports, "node reports", say,
                      lambda view, report: view.put_node_report(*report))
    say("verifying: reading everything back")
    copy = await read_target(target)
    difference = first_difference(contents, copy)
    if difference is None and await target.configuration_tag() != contents.tag:
        difference = "the configuration tags differ"
    if difference is not None:
        raise MigrationError(f"the copy differs from the source: {difference}")
    say(f"verified: {copy.counts()}; configuration tag {contents.tag}")
    return contents


async def _in_batches(target, items, what, say, change):
    for start in range(0, len(items), BATCH):
        batch = items[start:start + BATCH]

        async def decision(view, batch=batch):
            for item in batch:
                await change(view, item)
        await target.decide(decision)
        say(f"{what}: {start + len(batch)}/{len(items)} copied")


# -------------------------------------------------------------- the command


def configure(parser):
    parser.add_argument("--from", dest="source", required=True, metavar="sqlite:///PATH",
                        help="the control service's SQLite database (stop the service first)")
    parser.add_argument("--to", dest="target", required=True, metavar="URL",
                        help="an empty etcd store: etcd://HOST:PORT[,HOST:PORT...][/PREFIX], "
                             "or etcds://... for TLS")
    parser.add_argument("--to-ca", metavar="PEM", help="etcds://: the CA of etcd's members")
    parser.add_argument("--to-cert", metavar="PEM",
                        help="etcds://: a client certificate, when etcd asks for one")
    parser.add_argument("--to-key", metavar="PEM", help="etcds://: the key of --to-cert")


def check_options(options):
    """(SQLiteURL, EtcdURL, TLSFiles or None); BadStoreURL naming what is wrong."""
    try:
        source = parse_store_url(options.source)
    except BadStoreURL as error:
        raise BadStoreURL(f"--from: {error}") from None
    try:
        target = parse_store_url(options.target)
    except BadStoreURL as error:
        raise BadStoreURL(f"--to: {error}") from None
    if not isinstance(source, SQLiteURL):
        raise BadStoreURL(f"--from {source}: migrate copies from a sqlite:///PATH store")
    if not isinstance(target, EtcdURL):
        raise BadStoreURL(f"--to {target}: migrate copies into an etcd:// or etcds:// store")
    tls = etcd_tls_files(target, options.to_ca, options.to_cert, options.to_key, "--to")
    return source, target, tls


def open_source(url):
    """(lock, the SQLiteStore at url), locked against a control service starting on it."""
    # Imported here: the control command imports this module for its migrate action.
    from powerstripflocker.control.command import ConfigurationError, lock_database

    if not os.path.isfile(url.path):
        raise MigrationError(f"--from: there is no database at {url.path}")
    try:
        lock = lock_database(url.path)
    except ConfigurationError as error:
        raise MigrationError(f"--from: {error}; stop it before migrating") from None
    try:
        return lock, SQLiteStore(url.path)
    except sqlite3.Error as error:
        lock.close()
        raise MigrationError(f"--from: cannot open {url.path}: {error}") from None


def run(options):
    def say(line):
        print(line, flush=True)

    try:
        source_url, target_url, tls = check_options(options)
    except BadStoreURL as error:
        print(f"control migrate: {error}", file=sys.stderr)
        return 2

    async def main(reactor):
        try:
            lock, source = open_source(source_url)
        except MigrationError as error:
            raise SystemExit(f"control migrate: {error}")
        try:
            target = EtcdStore(EtcdClient(reactor, target_url.endpoints, tls=tls))
        except (OSError, ValueError) as error:
            source.close()
            lock.close()
            raise SystemExit(f"control migrate: --to: cannot use its TLS files: {error}")
        try:
            say(f"migrating {source_url} into {target_url}")
            await migrate(source, target, say)
            say(f"done: {target_url} holds a verified copy of {source_url}")
        except (MigrationError, EtcdError) as error:
            raise SystemExit(f"control migrate: {error}")
        finally:
            await target.close()
            source.close()
            lock.close()

    return run_reactor(main)

