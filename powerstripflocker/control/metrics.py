"""Prometheus metrics of the control service, in a registry of its own."""

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class _ClusterCollector:
    """Gauges read from the service at scrape time: read() (asynchronous, the store's
    part) before each collect()."""

    def __init__(self, service):
        self.service = service
        self._datasets = self._leases = None
        self._store_reachable = False

    async def read(self):
        self._store_reachable, _ = await self.service.store_health()
        self._datasets = self._leases = None
        if self._store_reachable:
            async def both(view):
                return await view.datasets(), await view.leases()
            try:
                self._datasets, self._leases = await self.service.store.decide(both)
            except Exception:
                self._store_reachable = False

    def collect(self):
        yield GaugeMetricFamily(
            "powerstrip_flocker_control_store_up",
            "1 when this control replica reaches its store, else 0",
            value=int(self._store_reachable))
        yield from self._nodes()
        if self._datasets is None:
            return
        datasets = self._datasets
        configured = GaugeMetricFamily(
            "powerstrip_flocker_control_datasets", "Configured datasets",
            labels=["deleted", "manifested"])
        counts = {}
        for d in datasets:
            key = (str(d.deleted).lower(), str(d.manifested).lower())
            counts[key] = counts.get(key, 0) + 1
        for (deleted, manifested), count in sorted(counts.items()):
            configured.add_metric([deleted, manifested], count)
        yield configured
        yield GaugeMetricFamily(
            "powerstrip_flocker_control_leases", "Leases held", value=len(self._leases))

    def _nodes(self):
        nodes = self.service.fresh_nodes()
        yield GaugeMetricFamily(
            "powerstrip_flocker_control_nodes", "Nodes with a fresh report", value=len(nodes))
        yield GaugeMetricFamily(
            "powerstrip_flocker_control_transfers", "Transfers reported by agents",
            value=sum(len(n.transfers) for n in nodes))
        yield GaugeMetricFamily(
            "powerstrip_flocker_control_waiting_polls", "Agent long-polls waiting",
            value=len(self.service._waiters))


class ControlMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service):
        self.registry = CollectorRegistry()
        self._cluster = _ClusterCollector(service)
        self.registry.register(self._cluster)
        self.requests = Counter(
            "powerstrip_flocker_control_requests", "HTTP requests answered, by route and status",
            ["route", "code"], registry=self.registry,
        )

    async def render(self):
        await self._cluster.read()
        return generate_latest(self.registry)
