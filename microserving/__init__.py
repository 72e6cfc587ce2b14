"""The `microserving` command line (only that: the system itself is core_api, sim, real, strategies,
calibration and experiments). `python -m microserving` runs it too."""
