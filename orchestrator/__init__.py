"""orch: deploy multi-container Compose apps through DEV -> TEST -> PROD over SSH."""

__version__ = "0.1.0"
