"""A local stand-in for a Kubernetes cluster, for development and end-to-end tests only.

kmock's API emulator plays the API server (with a garbage collector and graceful pod
deletion added); a scheduler, a Deployment controller, a kube-proxy and one node agent per
fake GPU node play the rest, running every Pod the operator creates as local processes on
127.0.0.1. Nothing here is imported by the planner, the data plane or the operator.
"""
