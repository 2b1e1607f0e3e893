"""The agent <-> control service protocol (client side).

PUT /agent/v1/nodes/<node_uuid>   this node's report -> {"generation": N}
GET /agent/v1/cluster?generation=N&timeout=S   long-poll for the cluster view
"""

import json
from urllib.parse import urlencode

import treq

from powerstripflocker.clients.http import control_root


class ControlError(Exception):
    pass


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

    async def report(self, node_uuid, report):
        response = await self.http.put(
            f"{self.base_url}/agent/v1/nodes/{node_uuid}",
            data=json.dumps(report).encode(),
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
