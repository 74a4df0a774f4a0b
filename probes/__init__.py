"""Probe catalog and programs: BPF C for bcc, SystemTap scripts."""
