"""The HelixCluster API: names, CRD generation, schema defaults and the typed spec with its checks."""
