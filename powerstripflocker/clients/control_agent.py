"""The agent <-> control service protocol (client side).

PUT /agent/v1/nodes/<node_uuid>   this node's report -> {"generation": N}
GET /agent/v1/cluster?generation=N&timeout=S   long-poll for the cluster view

IControlClient says what an agent uses; ControlClient talks HTTP, MemoryControl is an
in-memory stand-in with the same answers (tests/agent/test_control_contract.py holds both
to them).
"""

import json
from urllib.parse import urlencode

import treq
from twisted.internet import defer
from zope.interface import Interface, implementer

from powerstripflocker.clients.http import UNAVAILABLE_CODE, Replicas, within

REQUIRED_REPORT_FIELDS = ("host", "agent_url", "datasets")


class ControlError(Exception):
    pass


class IControlClient(Interface):
    """The control service as a node agent sees it. Errors raise ControlError (the
    service answered, not with 200) or the connection's error."""

    def report(node_uuid, report, era=None):
        """(async) Send this node's report ({"host", "agent_url", "datasets",
        "transfers"?, "trash"?}), of the agent run era: {"generation": N}."""

    def cluster(generation=None, timeout=30):
        """(async) The cluster view {"generation", "datasets", "nodes", "leases"}: at once
        unless generation is the current one, else when it changes or after timeout
        seconds."""


@implementer(IControlClient)
class ControlClient:
    """base_url: the control service, given with or without /v1, or a comma-separated
    list of its replicas (http.Replicas fails over between them). Both requests are
    safe to send twice: a report replaces the last one, a poll only reads."""

    def __init__(self, base_url, token=None, http=None, reactor=None):
        self.replicas = Replicas(base_url, reactor)
        self.token = token
        self.http = http or treq
        self._reactor = reactor

    @property
    def base_url(self):
        """The replica asked first."""
        return self.replicas.root

    def _headers(self, extra=None):
        headers = {}
        if self.token:
            headers[b"Authorization"] = [f"Bearer {self.token}".encode()]
        headers.update(extra or {})
        return headers

    async def _exchange(self, method, path, timeout, **kwargs):
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor

        async def exchange(root):
            response = await self.http.request(method, root + path, **kwargs)
            return response, await response.content()

        def attempt(root):
            return within(defer.Deferred.fromCoroutine(exchange(root)), timeout, reactor)
        return await self.replicas.call(
            attempt, unavailable=lambda answer: answer[0].code == UNAVAILABLE_CODE)

    def _decode(self, answer, what):
        response, body = answer
        if response.code != 200:
            raise ControlError(f"{what}: HTTP {response.code}: "
                               f"{body[:500].decode('utf-8', 'replace')}")
        try:
            return json.loads(body)
        except ValueError as e:
            raise ControlError(f"{what}: not JSON: {e}") from e

    async def report(self, node_uuid, report, era=None):
        body = dict(report, era=era) if era is not None else report
        answer = await self._exchange(
            "PUT", f"/agent/v1/nodes/{node_uuid}", 30, data=json.dumps(body).encode(),
            headers=self._headers({b"Content-Type": [b"application/json"]}))
        return self._decode(answer, "report")

    async def cluster(self, generation=None, timeout=30):
        params = {"timeout": timeout}
        if generation is not None:
            params["generation"] = generation
        answer = await self._exchange("GET", f"/agent/v1/cluster?{urlencode(params)}",
                                      timeout + 15, headers=self._headers())
        return self._decode(answer, "cluster view")


@implementer(IControlClient)
class MemoryControl:
    """A control service in memory for agents: the datasets it configures (set
    configure() with the view's dataset entries) and the nodes' last reports. Long-polls
    wait for the next change; timeouts are not kept (nothing runs a clock here)."""

    def __init__(self, generation=1):
        self.generation = generation
        self.datasets = []
        self.leases = []
        self.reports = {}             # node_uuid -> (report, era)
        self._waiting = []

    def view(self):
        nodes = [dict(report, uuid=node_uuid, transfers=report.get("transfers", []))
                 for node_uuid, (report, _) in sorted(self.reports.items())]
        return {"generation": self.generation, "datasets": list(self.datasets),
                "leases": list(self.leases), "nodes": nodes}

    def _changed(self):
        self.generation += 1
        waiting, self._waiting = self._waiting, []
        for poll in waiting:
            poll.callback(self.view())

    def configure(self, datasets):
        self.datasets = list(datasets)
        self._changed()

    async def report(self, node_uuid, report, era=None):
        missing = [name for name in REQUIRED_REPORT_FIELDS if name not in report]
        if missing:
            raise ControlError(f"report: HTTP 400: missing {', '.join(missing)}")
        previous = self.reports.get(node_uuid)
        self.reports[node_uuid] = (dict(report), era)
        if previous is None or previous[0] != report:
            self._changed()
        return {"generation": self.generation}

    def cluster(self, generation=None, timeout=30):
        if generation != self.generation or timeout == 0:
            return defer.succeed(self.view())
        poll = defer.Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(poll)
        return poll
