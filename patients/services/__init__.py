"""Workflows that write patients' data (HackSoft-style services)."""
