"""opslab: an executable curriculum for operating an MLOps platform on Kubernetes."""

__version__ = "0.1.0"
