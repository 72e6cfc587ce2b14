"""Calibration: profile a real engine, fit the simulator's cost model, validate sim against real."""
