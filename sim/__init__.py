"""SimPy backend: simulated engines, links and cost models (never imports torch)."""
