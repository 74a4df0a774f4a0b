"""Built-in detectors, loaded through the same hooks and entry point as third-party plugins."""
