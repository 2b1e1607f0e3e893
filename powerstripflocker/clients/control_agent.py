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

from powerstripflocker.clients.http import control_root

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
    """base_url: the control service, given with or without /v1."""

    def __init__(self, base_url, token=None, http=None):
        self.base_url = control_root(base_url)
        self.token = token
        self.http = http or treq

    def _headers(self, extra=None):
        headers = {}
        if self.token:
            headers[b"Authorization"] = [f"Bearer {self.token}".encode()]
        headers.update(extra or {})
        return headers

    async def _decode(self, response, what):
        body = await response.content()
        if response.code != 200:
            raise ControlError(f"{what}: HTTP {response.code}: "
                               f"{body[:500].decode('utf-8', 'replace')}")
        try:
            return json.loads(body)
        except ValueError as e:
            raise ControlError(f"{what}: not JSON: {e}") from e

    async def report(self, node_uuid, report, era=None):
        body = dict(report, era=era) if era is not None else report
        response = await self.http.put(
            f"{self.base_url}/agent/v1/nodes/{node_uuid}",
            data=json.dumps(body).encode(),
            headers=self._headers({b"Content-Type": [b"application/json"]}), timeout=30)
        return await self._decode(response, "report")

    async def cluster(self, generation=None, timeout=30):
        params = {"timeout": timeout}
        if generation is not None:
            params["generation"] = generation
        response = await self.http.get(
            f"{self.base_url}/agent/v1/cluster?{urlencode(params)}",
            headers=self._headers(), timeout=timeout + 15)
        return await self._decode(response, "cluster view")


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
