"""The powerstrip-flocker command (main.py) and its client programs: status, release,
restore, units, demo. The long-running parts' commands live with their parts."""
