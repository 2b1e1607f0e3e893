"""The few Docker Engine API calls we need: running containers, the event stream, kill.

IDockerEngine has a treq implementation over the daemon's socket and an in-memory
fake; one contract suite (tests/docker_contract.py) runs against both.
"""

import json
from dataclasses import dataclass, field
from urllib.parse import quote

import treq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import Interface, implementer

from powerstripflocker.clients.http import connection_pool

API_VERSION = "v1.41"


@dataclass(frozen=True)
class Mount:
    type: str  # "bind" or "volume"
    source: str  # host path
    destination: str
    name: str = ""  # volume name, for Type volume
    driver: str = ""


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    created: float  # seconds since the epoch
    mounts: tuple = field(default_factory=tuple)


@dataclass(frozen=True)
class ContainerEvent:
    action: str  # "start", "die", "destroy", ...
    container_id: str
    name: str
    time: float


class DockerUnavailable(Exception):
    """The Docker daemon did not answer."""


class IDockerEngine(Interface):
    def running_containers():
        """Deferred firing with the list of running Container."""

    def watch_events(on_event, since=None):
        """Call on_event(ContainerEvent) for each container event from now on, or from
        since (seconds since the epoch) when given, so no event between a reconcile
        and the stream's start is lost.

        Returns a Deferred that fires when the stream ends (the daemon went away or
        stop_watching was called); the caller reconciles and watches again."""

    def stop_watching():
        """End the event streams started by watch_events."""

    def kill(container_id):
        """Deferred: SIGKILL the container (fencing); a container that is gone or not
        running is not an error. Fails with DockerUnavailable when the daemon does not
        answer."""


def _container(entry):
    names = entry.get("Names") or ["/" + entry["Id"][:12]]
    mounts = tuple(
        Mount(type=m.get("Type", ""), source=m.get("Source", ""),
              destination=m.get("Destination", ""), name=m.get("Name", ""),
              driver=m.get("Driver", ""))
        for m in entry.get("Mounts") or ()
    )
    return Container(entry["Id"], names[0].lstrip("/"), float(entry.get("Created", 0)), mounts)


@implementer(IAgentEndpointFactory)
class _DaemonEndpoints:
    def __init__(self, reactor, address):
        self._reactor = reactor
        self._address = address

    def endpointForURI(self, uri):
        if self._address.startswith("unix://"):
            return UNIXClientEndpoint(self._reactor, self._address[len("unix://"):])
        host, _, port = self._address[len("tcp://"):].rpartition(":")
        return TCP4ClientEndpoint(self._reactor, host, int(port))


class _EventStream(Protocol):
    """Receives the streamed /events body: one JSON document per line."""

    def __init__(self, on_document):
        self._buffer = b""
        self._on_document = on_document
        self.finished = Deferred()

    def dataReceived(self, data):
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._on_document(json.loads(line))

    def connectionLost(self, reason):
        self.finished.callback(None)

    def stop(self):
        self.transport.stopProducing()


@implementer(IDockerEngine)
class DockerEngineClient:
    """IDockerEngine over a daemon's unix:///path or tcp://host:port."""

    def __init__(self, reactor, address, timeout=30.0):
        if not address.startswith(("unix://", "tcp://")):
            raise ValueError(f"Docker address must be unix:///path or tcp://host:port: "
                             f"{address!r}")
        if address.startswith("unix://") and len(address[len("unix://"):].encode()) > 107:
            raise ValueError(f"unix socket path longer than 107 bytes: {address!r}")
        self.address = address
        self._timeout = timeout
        self._pool = connection_pool(reactor)
        self._http = treq.client.HTTPClient(Agent.usingEndpointFactory(
            reactor, _DaemonEndpoints(reactor, address), pool=self._pool))
        self._streams = []

    def close(self):
        """Stop watching and close kept-alive connections; fires when they are closed."""
        self.stop_watching()
        return self._pool.closeCachedConnections()

    async def _get_json(self, path):
        try:
            response = await self._http.get(f"http://docker/{API_VERSION}{path}",
                                            timeout=self._timeout)
            body = await response.content()
        except Exception as reason:
            raise DockerUnavailable(f"Docker at {self.address}: {reason}") from None
        if response.code != 200:
            raise DockerUnavailable(f"Docker at {self.address} answered {response.code} "
                                    f"to GET {path}: {body[:200]!r}")
        return json.loads(body)

    def running_containers(self):
        async def call():
            return [_container(entry) for entry in await self._get_json("/containers/json")]
        return Deferred.fromCoroutine(call())

    def kill(self, container_id):
        async def call():
            path = f"/containers/{quote(container_id)}/kill?signal=KILL"
            try:
                response = await self._http.post(f"http://docker/{API_VERSION}{path}",
                                                 timeout=self._timeout)
                body = await response.content()
            except Exception as reason:
                raise DockerUnavailable(f"Docker at {self.address}: {reason}") from None
            # 404: no such container; 409: not running. Either way it does not run.
            if response.code not in (204, 404, 409):
                raise DockerUnavailable(f"Docker at {self.address} answered {response.code} "
                                        f"to POST {path}: {body[:200]!r}")
        return Deferred.fromCoroutine(call())

    def watch_events(self, on_event, since=None):
        query = f"filters={quote(json.dumps({'type': ['container']}))}"
        if since is not None:
            query += f"&since={since:.6f}"

        def deliver(document):
            actor = document.get("Actor") or {}
            on_event(ContainerEvent(
                action=document.get("Action") or document.get("status", ""),
                container_id=actor.get("ID") or document.get("id", ""),
                name=(actor.get("Attributes") or {}).get("name", ""),
                time=float(document.get("timeNano", 0)) / 1e9 or float(document.get("time", 0)),
            ))

        async def stream():
            try:
                response = await self._http.get(
                    f"http://docker/{API_VERSION}/events?{query}")
            except Exception as reason:
                raise DockerUnavailable(f"Docker at {self.address}: {reason}") from None
            if response.code != 200:
                raise DockerUnavailable(f"Docker at {self.address} answered {response.code} "
                                        f"to GET /events")
            protocol = _EventStream(deliver)
            self._streams.append(protocol)
            response.deliverBody(protocol)
            try:
                await protocol.finished
            finally:
                self._streams.remove(protocol)
        return Deferred.fromCoroutine(stream())

    def stop_watching(self):
        for protocol in list(self._streams):
            protocol.stop()


@implementer(IDockerEngine)
class MemoryDockerEngine:
    """Containers as data; run() and stop() emit the events the daemon would."""

    def __init__(self, clock):
        self._clock = clock
        self._running = {}
        self._watchers = []
        self._counter = 0

    def run(self, name, mounts=()):
        self._counter += 1
        container = Container(f"{self._counter:064x}", name, self._clock.seconds(),
                              tuple(mounts))
        self._running[container.id] = container
        self._emit("start", container)
        return container

    def stop(self, container):
        del self._running[container.id]
        self._emit("die", container)

    def kill(self, container_id):
        container = self._running.get(container_id)
        if container is not None:
            self.stop(container)
        return succeed(None)

    def emit_only(self, action, container):
        """An event without the change of state it announces (Docker's list lags)."""
        self._emit(action, container)

    def _emit(self, action, container):
        event = ContainerEvent(action, container.id, container.name, self._clock.seconds())
        for on_event, _ in list(self._watchers):
            on_event(event)

    def running_containers(self):
        return succeed(list(self._running.values()))

    def watch_events(self, on_event, since=None):
        ended = Deferred()
        self._watchers.append((on_event, ended))
        return ended

    def stop_watching(self):
        watchers, self._watchers = self._watchers, []
        for _, ended in watchers:
            ended.callback(None)
