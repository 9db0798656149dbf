"""Fleet discovery: which Kubernetes nodes the planner may use and the GPU catalog they draw on."""
