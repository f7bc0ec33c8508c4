"""The platform's runtime: start, watch and stop its processes, talk to Prefect, roll bentos
out behind the balancer. `make` runs its modules (`python -m catdog_runtime.services up`).
"""
