"""The package surface (``sdxl_dist_log.offline``): what it hands on, and that importing it loads no wandb."""

from __future__ import annotations

import subprocess
import sys

from sdxl_dist_log import offline

# Every name the project imports from sdxl_dist_log.offline (cli, demo, benchmarks, tests): they must keep working.
USED_NAMES = [
    "BLOCK_SIZE", "FILE_HEADER", "OfflineRun", "ReadStatus", "WandbFileError", "chunk_crc", "find_run_dirs",
    "flatten", "format_run", "iter_payloads", "read_records", "read_run",
]


def test_module_exports() -> None:
    assert set(USED_NAMES) <= set(offline.__all__)
    for name in offline.__all__:
        assert hasattr(offline, name), name


def test_importing_offline_does_not_import_wandb_or_protobuf() -> None:
    code = (
        "import sys, sdxl_dist_log, sdxl_dist_log.offline; sdxl_dist_log.read_run; "
        "loaded = [m for m in sys.modules if m == 'wandb' or m.startswith(('wandb.', 'google.protobuf'))]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
