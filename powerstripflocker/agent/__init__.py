"""The node agent: converges one node to the cluster configuration.

- model.py: plain data (the cluster view from the control service, local datasets, actions)
- convergence.py: the pure decision function (cluster view + local datasets -> actions)
- service.py: AgentService, the agent as the composition of the parts below
- watcher.py: the long-poll of the cluster view and this node's reports
- converger.py: running what convergence decides, with backoff; failures and stalls
- mover.py: the push to a dataset's next primary, the receiving side, transfer records
- trash.py: deleted datasets kept a while, then purged
- local.py: what runs on and what uses this node's datasets
- peer.py: the agent <-> agent protocol's server (Klein routes); incoming.py: a push's
  body streamed as it arrives; receiver.py: IReceiver, what they need of the agent (the
  client side is clients/peer.py)
- backends/: storage backends behind IStorageBackend (directory, btrfs)
- streams/: a subprocess's output as an HTTP body and an HTTP body into a subprocess, with
  flow control, splice(2) on plain TCP and byte counting
- faults.py: the fault points for tests (nothing happens unless a fault is configured)
- command.py: `powerstrip-flocker agent`
"""
