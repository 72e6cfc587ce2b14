"""Built-in strategies; importing the package registers every one by name."""
from strategies import (  # noqa: F401
    adaptive,
    balanced_pd,
    data_parallel,
    migration,
    pd,
    pd_prefix_aware,
    prefix_aware,
    vllm_dp,
)
