"""A Powerstrip-compatible Docker Engine API proxy: pre- and post-hooks, streaming, hijack."""
