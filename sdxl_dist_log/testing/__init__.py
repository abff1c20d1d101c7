"""Test doubles for code that uses sdxl_dist_log on machines without the real thing (GPUs, a cluster).

Doubles are passed in through constructors (``WandbLogger(nvml=FakeNvml(2))``); production code never imports this
package.
"""
