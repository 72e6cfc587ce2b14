"""The trace formats by name, in a module light enough for a command line to list them without
loading the readers (core_api.traces holds the readers and checks it has one for each name)."""

TRACE_FORMATS = ("azure", "burstgpt", "mooncake", "sharegpt")
