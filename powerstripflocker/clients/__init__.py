"""One seam per outside service: the Flocker v1 API, the Docker Engine API, etcd and the
agent protocol, each an interface with a real client and an in-memory fake."""
