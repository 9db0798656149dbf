"""The control layer: kopf handlers, controller loops and the Kubernetes API adapter; the only layer that
touches kopf and the API."""
