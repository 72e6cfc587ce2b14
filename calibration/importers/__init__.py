"""Readers that turn public GPU measurements into the project's cost-profile files.

One module per source format; each writes a profile that records where its numbers came from
and the held-out error of the model built from them.
"""
