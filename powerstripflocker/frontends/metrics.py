"""Prometheus metrics of one adapter or plugin process, in a registry of its own."""

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PLACEMENT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.hooks = Counter(
            "powerstrip_flocker_hooks", "Powerstrip hook requests answered, by type and outcome",
            ["type", "outcome"], registry=self.registry,
        )
        self.creates = Counter(
            "powerstrip_flocker_datasets_created", "Datasets created for a new volume name",
            registry=self.registry,
        )
        self.moves = Counter(
            "powerstrip_flocker_datasets_moved", "Datasets moved to this node",
            registry=self.registry,
        )
        self.failures = Counter(
            "powerstrip_flocker_placement_failures", "Volumes that could not be made local",
            ["kind"], registry=self.registry,
        )
        self.placement_seconds = Histogram(
            "powerstrip_flocker_placement_seconds",
            "Time to make one volume local to this node", buckets=PLACEMENT_BUCKETS,
            registry=self.registry,
        )

    def render(self):
        return generate_latest(self.registry)
