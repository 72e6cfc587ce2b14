"""Built-in strategies; importing the package registers every one by name."""
from strategies import data_parallel, pd  # noqa: F401
