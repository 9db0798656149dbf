"""Who may talk to whom: the cluster's TLS material, the stage's allowed next hops, client API keys."""
