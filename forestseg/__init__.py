"""forestseg: a reproducible DVC pipeline that trains UNets to segment forest in aerial photos."""

import os

__version__ = "0.1.0"

# oneDNN's threaded kernels wait for as many threads as they asked OpenMP for; with OMP_DYNAMIC=true
# OpenMP may hand them fewer, and a training step never ends (a bf16 1x1 convolution's backward hung
# for good, deaf to SIGTERM, on 2026-12-05). OpenMP reads it when torch loads it: here, before any
# forestseg module imports torch. The thread count is train.threads' (or --threads') either way.
if os.environ.get("OMP_DYNAMIC", "").strip().lower() not in ("", "false"):
    os.environ["OMP_DYNAMIC"] = "false"
