"""Read an offline W&B run back: for tests, the ``sdxl-dist-log inspect`` command and reports.

wandb 0.30+ ships no reader for its ``.wandb`` transaction log, so this package parses it itself, one module per
concern (each imports only the ones listed after it):

* ``attempts``: a run across its attempts and parts, from the logger's journal (:func:`format_attempts`);
* ``rundir``: find run directories and read one (:func:`read_run`, :func:`find_run_dirs`);
* ``report``: the text summary that ``inspect`` prints (:func:`format_run`);
* ``decode``: payloads -> ``Record`` protobufs -> values folded into the run (:func:`read_records`);
* ``items``: the items of history, summary and config records -> rows and folded dicts, one pass each;
* ``model``: :class:`OfflineRun`, :class:`OfflineArtifact`, key naming (:func:`flatten`);
* ``logfile``: the file format as bytes: header, 32 KiB blocks, chunks, CRCs (:func:`iter_payloads`).

Importing it imports neither wandb nor protobuf: the protobuf classes load on first read.

Example:
    >>> from sdxl_dist_log.offline import read_run, format_run
    >>> run = read_run("wandb/offline-run-20250101_120000-abc123")  # doctest: +SKIP
    >>> run.column("loss/train")[:2]  # doctest: +SKIP
    [(0, 1.25), (1, 1.1)]
    >>> print(format_run(run))  # doctest: +SKIP
"""

from __future__ import annotations

from sdxl_dist_log.offline.attempts import Attempt, attempts_of, format_attempts, step_gaps, tells_more
from sdxl_dist_log.offline.decode import RecordReader, count_records, read_records
from sdxl_dist_log.offline.logfile import BLOCK_SIZE, FILE_HEADER, ReadStatus, WandbFileError, chunk_crc, iter_payloads
from sdxl_dist_log.offline.model import KEY_SEP, OfflineArtifact, OfflineRun, flatten
from sdxl_dist_log.offline.report import format_run
from sdxl_dist_log.offline.rundir import find_run_dirs, read_run

__all__ = [
    "Attempt",
    "BLOCK_SIZE",
    "FILE_HEADER",
    "KEY_SEP",
    "OfflineArtifact",
    "OfflineRun",
    "ReadStatus",
    "RecordReader",
    "WandbFileError",
    "attempts_of",
    "chunk_crc",
    "count_records",
    "find_run_dirs",
    "flatten",
    "format_attempts",
    "format_run",
    "iter_payloads",
    "read_records",
    "read_run",
    "step_gaps",
    "tells_more",
]
