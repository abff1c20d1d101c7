"""System figures of every GPU on every node, shipped to the primary rank through the store, without collectives.

One module per concern, each importing only those listed before it:

* :mod:`~sdxl_dist_log.system.gpus`: GPU identities, and which NVML GPU a CUDA device is;
* :mod:`~sdxl_dist_log.system.fields`: the tables of figures (NVML, torch.cuda, psutil) and their readers;
* :mod:`~sdxl_dist_log.system.guard`: the one place that catches every exception, and why;
* :mod:`~sdxl_dist_log.system.samplers`: loading NVML, and the samplers that run the tables;
* :mod:`~sdxl_dist_log.system.wire`: the store protocol (keys, records);
* :mod:`~sdxl_dist_log.system.rows`: key naming, row assembly, aggregates, staleness (pure);
* :mod:`~sdxl_dist_log.system.collector`: the primary's reader of the store;
* :mod:`~sdxl_dist_log.system.service`: :class:`SystemMetrics`, the threads.

See ``docs/system_metrics.md`` for the keys of the rows, the protocol, and measured sizes and costs.
"""

from __future__ import annotations

from sdxl_dist_log.system.fields import CUDA_FIELDS, HOST_FIELDS, NVML_FIELDS, CudaProbe, TorchCuda
from sdxl_dist_log.system.gpus import GpuIdentity, match_gpu, normalize_pci_bus_id, normalize_uuid
from sdxl_dist_log.system.rows import (
    NodeReport,
    RankReport,
    StalenessTracker,
    aggregate_figures,
    assemble_row,
    entity_key,
    node_figure_key,
)
from sdxl_dist_log.system.samplers import CudaSampler, HostSampler, NvmlLoader, NvmlSampler
from sdxl_dist_log.system.service import SystemMetrics, start_system_metrics
from sdxl_dist_log.system.wire import KeyValueStore

__all__ = [
    "CUDA_FIELDS",
    "HOST_FIELDS",
    "NVML_FIELDS",
    "CudaProbe",
    "CudaSampler",
    "GpuIdentity",
    "HostSampler",
    "KeyValueStore",
    "NodeReport",
    "NvmlLoader",
    "NvmlSampler",
    "RankReport",
    "StalenessTracker",
    "SystemMetrics",
    "TorchCuda",
    "aggregate_figures",
    "assemble_row",
    "entity_key",
    "match_gpu",
    "node_figure_key",
    "normalize_pci_bus_id",
    "normalize_uuid",
    "start_system_metrics",
]
