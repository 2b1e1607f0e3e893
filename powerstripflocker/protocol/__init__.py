"""Rules of the wire protocols that both their clients and their servers follow, as pure
functions over plain data (so a fake and the real service decide alike)."""
