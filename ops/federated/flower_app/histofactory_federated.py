"""Entry module of the Flower App: the components live in ``ops.federated.apps`` (installed with histofactory)."""

from ops.federated.apps import clientapp, serverapp

__all__ = ["clientapp", "serverapp"]
