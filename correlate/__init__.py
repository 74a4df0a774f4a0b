"""correlate: GlusterFS wire traffic and process probes on one timeline, with detectors."""

__version__ = "0.1.0"
