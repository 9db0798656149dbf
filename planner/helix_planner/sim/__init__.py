"""Discrete-event simulation of serving a model on a cluster (`helix simulate`).

    scenario = load_scenario("geo24.ini", "helix.ini", load_catalog(), throughput_model="helix")
    result = Simulation(scenario, "iwrr", SimConfig(), load_lengths("azure-conv", traces)).run()

Modules: engine (event queue), compute (GPU nodes, batching), network (links), memory (KV
cache), workload (lengths, arrivals), routes and schedulers, simulation (front end and
request flow), metrics and report (results), plots (SVG), inputs (files), cli.
"""
