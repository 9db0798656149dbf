"""Helix operator: runs HelixCluster objects on Kubernetes (kopf handlers, pure manifest builders).

Import name `helix_operator` because the stdlib owns `operator`.
"""
