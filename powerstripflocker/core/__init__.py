"""The core every frontend shares: which volumes a request names (volumes), making them
local to this node (placement) and knowing which are in use here (inuse). It talks to the
outside only through the interfaces in clients/."""
