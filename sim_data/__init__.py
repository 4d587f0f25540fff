"""Simulated near-field drives: procedural scenes, fisheye rendering, ultrasonic echoes, ground truth (no torch)."""
