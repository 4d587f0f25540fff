"""Sensors layer: rig and calibration models, message types, logs, drivers, synchronisation (no torch)."""
