"""The request path of one turn in plain pieces: plan, cascade, shielded cloud, answer buffer."""
