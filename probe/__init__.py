"""Passive probe detecting threat markers in mirrored traffic (see ARCHITECTURE.md)."""

import os

# numpy serves the probe's vector operations, never linear algebra: OpenBLAS's own threads would
# only spin on the cores the capture workers and the tap's other work need. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
