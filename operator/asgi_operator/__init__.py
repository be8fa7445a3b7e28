"""The asgi-operator: reconciles AsgiServer resources into Pods (see the operator issue)."""

__version__ = "0.1.0"
