"""Prometheus metrics of the control service, in a registry of its own."""

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class _ClusterCollector:
    """Gauges read from the service at scrape time."""

    def __init__(self, service):
        self.service = service

    def collect(self):
        datasets = self.service.datasets()
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
            "powerstrip_flocker_control_leases", "Leases held", value=len(self.service.leases()))
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
        self.registry.register(_ClusterCollector(service))
        self.requests = Counter(
            "powerstrip_flocker_control_requests", "HTTP requests answered, by route and status",
            ["route", "code"], registry=self.registry,
        )

    def render(self):
        return generate_latest(self.registry)
