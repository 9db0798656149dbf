"""Status, conditions and the operator's own metrics, computed as pure functions of what a reconcile observed."""
