"""How Ray Train hands the datasets to the workers: training split equally, validation split completely."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from ray.train import DataConfig


class SegDataConfig(DataConfig):
    """Ray Train's ``DataConfig`` with one change: the ``complete`` datasets are split with ``equal=False``.

    ``equal=True`` (Ray's default) trims rows so every worker gets the same number, which DDP training needs
    (every worker must take the same number of steps). Validation has no such need, and trimming would drop
    images: 101 CamVid val images over 2 workers would be evaluated as 100, unlike MMSeg and unlike
    ``jobs/test.py``. Validation only all-reduces the per-class areas after each worker's loop, so
    uneven shards are fine.
    """

    def __init__(self, complete: Sequence[str] = ("val",)):
        super().__init__(datasets_to_split="all")
        self._complete = set(complete)

    @staticmethod
    def default_ingest_options():
        """Ray Train's default ingest options, read from the current ``DataContext`` as Ray's are.

        Ray's own version passes ``exclude_resources`` (always zero here), which Ray Data 2.60 deprecates
        with a warning in every process that configures a dataset; leaving it out changes nothing else.
        """
        from ray.data import DataContext, ExecutionOptions

        current = DataContext.get_current().execution_options
        return ExecutionOptions(resource_limits=current.resource_limits, preserve_order=current.preserve_order,
                                verbose_progress=current.verbose_progress)

    def configure(self, datasets: Dict[str, Any], world_size: int, worker_handles: Optional[List[Any]],
                  worker_node_ids: Optional[List[str]], **kwargs) -> List[Dict[str, Any]]:
        equal = {k: v for k, v in datasets.items() if k not in self._complete}
        output = super().configure(equal, world_size, worker_handles, worker_node_ids, **kwargs)
        locality_hints = worker_node_ids if self._enable_shard_locality else None
        for name, ds in datasets.items():
            if name not in self._complete:
                continue
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            for i, split in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=locality_hints)):
                output[i][name] = split
        return output
