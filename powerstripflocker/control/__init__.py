"""A Flocker-compatible control service: the v1 REST API, SQLite persistence,
leases, the node registry fed by agent reports, and the agent protocol."""
