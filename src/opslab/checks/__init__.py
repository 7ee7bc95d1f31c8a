"""Checks that hidden tests call, grouped by domain (workloads, TLS, service levels, commands, …).

Each reads the live state (the cluster, Prometheus, what the gateway serves over TLS), never the
trainee's code, and fails with an AssertionError whose message a trainee understands. All of
them share `core`: a state still converging is looked at again until a bound; a state that is
plainly wrong fails at once.
"""
