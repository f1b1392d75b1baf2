"""Chaos Toolkit controls shipped with chaosec2panic."""
