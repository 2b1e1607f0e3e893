"""What every listener shares: credentials (the cluster token, client certificates) and
bounded HTTP listening (body limits, head deadlines, backlog)."""
