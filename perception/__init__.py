"""Perception: torch-free preprocessing shared with the embedded runtime, and the torch fusion network."""
