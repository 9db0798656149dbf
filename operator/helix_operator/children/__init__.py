"""Pure builders of a HelixCluster's children (worker pods, front end, plan ConfigMaps, TLS, policies) and
rollout decisions."""
