"""The agent <-> agent protocol, client side (the server is agent/peer.py): describe a
dataset on another agent, push a stream to it, have it acquire what it received.

IPeerClient says what an agent uses; PeerClient talks HTTP, MemoryPeers is an in-memory
stand-in with the same answers (tests/agent/test_peer_contract.py holds both to them).
"""

import json
import secrets
from urllib.parse import quote, urlencode

import treq
from zope.interface import Interface, implementer


class PeerError(Exception):
    """Another agent answered, and not with 200: its HTTP code and description."""

    def __init__(self, code, description):
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class IPeerClient(Interface):
    """Talking to the agent at agent_url about dataset_id. An agent that answers with an
    error raises PeerError; one that cannot be reached raises the connection's error."""

    def describe(agent_url, dataset_id):
        """(async) {"dataset_id", "primary", "origin", "snapshots", "formats",
        "generation", "accepting", "reason"}."""

    def push(agent_url, plan, body, generation=None):
        """(async) Send body (the IBodyProducer of plan's stream, counting .bytes) as
        dataset_id's push: {"dataset_id", "received", "bytes", "bytes_sent"}."""

    def acquire(agent_url, dataset_id, received, maximum_size, generation=None):
        """(async) Have the agent make the copy it received primary:
        {"dataset_id", "path"}."""


@implementer(IPeerClient)
class PeerClient:
    """Talks to other agents over HTTP: snapshots, streamed push, acquire."""

    def __init__(self, reactor, node_uuid, token=None, http=None):
        self.reactor = reactor
        self.node_uuid = node_uuid
        self.token = token
        self.http = http or treq

    def _headers(self, extra=None):
        headers = {b"X-Powerstrip-Flocker-Node": [self.node_uuid.encode()]}
        if self.token:
            headers[b"Authorization"] = [f"Bearer {self.token}".encode()]
        headers.update(extra or {})
        return headers

    def _url(self, agent_url, dataset_id, action, params=None):
        url = f"{agent_url.rstrip('/')}/agent/v1/datasets/{quote(dataset_id)}/{action}"
        if params:
            url += "?" + urlencode({k: v for k, v in params.items() if v is not None})
        return url

    async def _json_response(self, response):
        body = await response.content()
        try:
            decoded = json.loads(body)
        except ValueError:
            decoded = {"description": body[:500].decode("utf-8", "replace")}
        if response.code != 200:
            raise PeerError(response.code, decoded.get("description", decoded)
                            if isinstance(decoded, dict) else decoded)
        return decoded

    async def describe(self, agent_url, dataset_id):
        response = await self.http.get(self._url(agent_url, dataset_id, "snapshots"),
                                       headers=self._headers(), timeout=30)
        return await self._json_response(response)

    async def push(self, agent_url, plan, body, generation=None):
        url = self._url(agent_url, plan.dataset_id, "push", {
            "format": plan.format, "snapshot": plan.snapshot, "parent": plan.parent,
            "size": plan.size, "generation": generation})
        response = await self.http.request(
            "PUT", url, data=body,
            headers=self._headers({b"Content-Type": [b"application/octet-stream"]}))
        result = await self._json_response(response)
        result["bytes_sent"] = body.bytes
        return result

    async def acquire(self, agent_url, dataset_id, received, maximum_size, generation=None):
        response = await self.http.post(
            self._url(agent_url, dataset_id, "acquire"),
            data=json.dumps({"received": received, "maximum_size": maximum_size,
                             "generation": generation}).encode(),
            headers=self._headers({b"Content-Type": [b"application/json"]}), timeout=120)
        return await self._json_response(response)


class MemoryPeer:
    """One agent as MemoryPeers keeps it: the datasets the configuration moves to it
    (moving_here), what it holds ({dataset_id: {"origin", "generation"}}) and the pushes
    it received but did not acquire yet."""

    def __init__(self, formats=("tar",), path_root="/memory/datasets"):
        self.formats = tuple(formats)
        self.path_root = path_root
        self.moving_here = set()
        self.held = {}
        self.received = {}            # token -> (dataset_id, generation)

    def path(self, dataset_id):
        return f"{self.path_root}/{dataset_id}"

    def refusal(self, dataset_id, generation=None):
        """(code, description) of why a push of dataset_id is refused, or None."""
        if dataset_id not in self.moving_here:
            return 403, f"the configuration does not place dataset {dataset_id} here"
        if dataset_id in self.held:
            return 409, f"dataset {dataset_id} is already held as primary here"
        return None


@implementer(IPeerClient)
class MemoryPeers:
    """Agents in memory, by agent URL: an agent URL nobody added is unreachable."""

    def __init__(self):
        self.agents = {}

    def add(self, agent_url, peer=None):
        self.agents[agent_url] = peer or MemoryPeer()
        return self.agents[agent_url]

    def _agent(self, agent_url):
        try:
            return self.agents[agent_url]
        except KeyError:
            raise ConnectionRefusedError(f"nothing listens at {agent_url}") from None

    async def describe(self, agent_url, dataset_id):
        peer = self._agent(agent_url)
        held = peer.held.get(dataset_id)
        refusal = peer.refusal(dataset_id)
        return {"dataset_id": dataset_id, "primary": held is not None,
                "origin": held["origin"] if held else None, "snapshots": [],
                "formats": list(peer.formats),
                "generation": held["generation"] if held else None,
                "accepting": refusal is None, "reason": refusal[1] if refusal else ""}

    async def push(self, agent_url, plan, body, generation=None):
        peer = self._agent(agent_url)
        if plan.format not in peer.formats:
            raise PeerError(400, f"this node receives {', '.join(peer.formats)}, not "
                                 f"{plan.format!r}")
        refusal = peer.refusal(plan.dataset_id, generation)
        if refusal is not None:
            raise PeerError(*refusal)
        token = secrets.token_hex(8)
        peer.received[token] = (plan.dataset_id, generation)
        return {"dataset_id": plan.dataset_id, "received": token, "bytes": body.bytes,
                "bytes_sent": body.bytes}

    async def acquire(self, agent_url, dataset_id, received, maximum_size, generation=None):
        peer = self._agent(agent_url)
        if dataset_id not in peer.moving_here:
            raise PeerError(403, f"the configuration does not place dataset {dataset_id} "
                                 "here")
        if peer.received.get(received, (None,))[0] != dataset_id:
            raise PeerError(404, f"no received copy {received} of dataset {dataset_id}")
        peer.held[dataset_id] = {"origin": "received", "generation": generation}
        return {"dataset_id": dataset_id, "path": peer.path(dataset_id)}
