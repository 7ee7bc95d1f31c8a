"""The embedded lab: a real Kubernetes control plane with simulated nodes on one machine.

It knows nothing of notebooks or grading. `opslab.lab.lab` is the entry point.
"""
