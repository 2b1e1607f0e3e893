"""The node agent: converges one node to the cluster configuration.

- model.py: plain data (the cluster view from the control service, local datasets, actions)
- convergence.py: the pure decision function (cluster view + local datasets -> actions)
- backends/: storage backends behind IStorageBackend (directory, btrfs)
- streams.py: streaming a subprocess's output as an HTTP body, and an HTTP body into a
  subprocess, with flow control and byte counting
- peer.py: the agent <-> agent HTTP protocol (server resources and client)
- service.py: the agent itself: long-poll, report, execute actions with backoff
- faults.py: fault injection switches for tests
- command.py: `powerstrip-flocker agent`
"""
