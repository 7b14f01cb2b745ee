"""modelport: a self-hosted model catalog and Models-as-a-Service platform."""

__version__ = "0.1.0"
