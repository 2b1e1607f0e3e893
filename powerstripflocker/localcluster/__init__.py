"""A cluster on this machine for the demo, the tests and the benchmarks: each node a
dockerd, an agent and the frontends, on loopback addresses or in network namespaces."""
