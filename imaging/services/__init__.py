"""Workflows that span models or touch files (HackSoft style: writes live here)."""
