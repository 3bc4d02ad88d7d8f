"""Intervention policies: behaviour policies, the model-based policy loop, safe policy files."""
