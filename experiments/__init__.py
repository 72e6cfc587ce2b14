"""Experiments, sweeps, plots and the `microserving` command line."""
