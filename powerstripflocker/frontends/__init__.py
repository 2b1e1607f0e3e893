"""The ways Docker reaches the core: the Powerstrip adapter (a pre-hook behind the proxy)
and the Docker volume plugin. Each parses a request, calls the core and renders the answer;
options.py holds the options both share."""
