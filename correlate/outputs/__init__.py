"""Renderings of a timeline: terminal, HTML, Perfetto, annotated pcapng."""
