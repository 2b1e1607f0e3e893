"""Shared test helpers: an in-memory control service behind StubTreq, and the
published Flocker schema to validate answers against."""

import json
import os
import uuid

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from powerstripflocker.control.asyncstore import AsyncStore
from powerstripflocker.control.etcdstore import EtcdStore
from powerstripflocker.control.httpapi import ControlAPI
from powerstripflocker.control.service import ControlService
from powerstripflocker.control.store import Store

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA_DIR = os.path.join(REPO_ROOT, "..", "shared", "reference", "flocker-schema")
BASE = "http://control.invalid"

NODE1 = "6c1b8a4d-6b8d-4f0a-9c55-1c2d8a0d2f11"
NODE2 = "0e0d1a52-3c8f-4b7e-8a1d-2f7c9b3e6a20"


def new_id():
    return str(uuid.uuid4())


def at_once(awaitable):
    """What a coroutine (or Deferred) of the service on SQLite or the in-memory etcd
    gives: it waits on nothing but its store, whose answers are ready at once."""
    outcome = []
    ensureDeferred(awaitable).addBoth(outcome.append)
    assert outcome, "the coroutine waited on something"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def harness(testcase, **kwargs):
    """A started Harness in a fresh directory of a trial TestCase, closed at cleanup."""
    path = testcase.mktemp()
    os.makedirs(path)
    h = Harness(path, **kwargs)
    testcase.addCleanup(h.close)
    return h


class Harness:
    """A ControlService on a Clock with its SQLite file in directory, served by StubTreq.
    With etcd (an IEtcd), the service is a replica on an EtcdStore over it instead, and
    store (the SQLite store, read directly by some tests) is None."""

    def __init__(self, directory, token=None, state_expiry=120.0, start=True, etcd=None,
                 clock=None, listen=False, default_replicas=0):
        self.directory = str(directory)
        self.db_path = os.path.join(self.directory, "control.db")
        if clock is None:
            clock = Clock()
            clock.advance(1_000_000)
        self.clock = clock
        self.token = token
        self.state_expiry = state_expiry
        self.etcd = etcd
        self.default_replicas = default_replicas
        # listen: served on a loopback port, for a service that waits on real I/O (a
        # real etcd), which StubTreq's in-memory requests cannot wait for.
        self.listen = listen
        self._port = None
        self.base = BASE
        self.open(start)

    def open(self, start=True):
        if self.etcd is None:
            self.store = Store(self.db_path)
            shared = AsyncStore(self.store)
        else:
            self.store = None
            shared = EtcdStore(self.etcd, report_ttl=self.state_expiry)
        self.service = ControlService(shared, self.clock, state_expiry=self.state_expiry,
                                      default_replicas=self.default_replicas)
        if start:
            at_once(self.service.start())
        self.api = ControlAPI(self.service, self.token)
        if self.listen:
            self._port = reactor.listenTCP(0, Site(self.api.resource()), interface="127.0.0.1")
            self.base = f"http://127.0.0.1:{self._port.getHost().port}"
            self.treq = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, False)))
        else:
            self.treq = StubTreq(self.api.resource())

    def restart(self):
        """A new service process on the same database (waiting long-polls are lost)."""
        self.close()
        self.open()

    def close(self):
        """A Deferred: on a real etcd, the store's watch takes a moment to stop."""
        stopping = Deferred.fromCoroutine(self.service.stop())
        if self._port is not None:
            listening, self._port = self._port, None
            stopping = gatherResults([stopping, listening.stopListening()])
        if self.store is not None:
            self.store.close()
        return stopping

    def snapshot(self):
        """Everything a bad request must leave untouched."""
        return (
            [d for d in self.store.datasets()],
            self.store.leases(),
            self.store.configuration_tag(),
            self.service.generation,
            {k: v.to_json() for k, v in self.service.nodes.items()},
        )

    async def request(self, method, path, body=None, raw=None, headers=None):
        """(response, decoded JSON body) for one request; headers None: the cluster token's."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if headers is None:
            headers = self.agent_headers()
        response = await self.treq.request(method, self.base + path, data=data,
                                           headers=headers)
        content = await response.content()
        if not self.listen:
            self.treq.flush()
        return response, json.loads(content)

    async def create(self, primary=NODE1, **fields):
        fields["primary"] = primary
        response, body = await self.request("POST", "/v1/configuration/datasets", fields)
        assert response.code == 201, body
        return body

    def agent_headers(self):
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def report(self, node, datasets=(), transfers=None, host="127.0.0.1",
                     agent_url="http://127.0.0.1:4524", era=None):
        body = {"host": host, "agent_url": agent_url, "datasets": list(datasets)}
        if transfers is not None:
            body["transfers"] = transfers
        if era is not None:
            body["era"] = era
        response, answer = await self.request("PUT", f"/agent/v1/nodes/{node}", body)
        assert response.code == 200, answer
        return answer


def header(response, name):
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


def flocker_schema():
    """{definition name: validator} from the published schema, or None when absent."""
    endpoints_path = os.path.join(SCHEMA_DIR, "endpoints.yml")
    types_path = os.path.join(SCHEMA_DIR, "types.yml")
    if not (os.path.exists(endpoints_path) and os.path.exists(types_path)):
        return None
    import yaml
    from jsonschema import Draft4Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    with open(endpoints_path) as f:
        endpoints = yaml.safe_load(f)
    with open(types_path) as f:
        types = yaml.safe_load(f)
    registry = Registry().with_resources([
        (endpoints["id"], Resource.from_contents(endpoints, default_specification=DRAFT4)),
        (types["id"], Resource.from_contents(types, default_specification=DRAFT4)),
    ])

    def validator(definition):
        return Draft4Validator(
            {"$ref": f"{endpoints['id']}#/definitions/{definition}"},
            registry=registry,
            format_checker=Draft4Validator.FORMAT_CHECKER,
        )

    return validator
