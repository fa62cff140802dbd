"""forestseg: a reproducible DVC pipeline that trains UNets to segment forest in aerial photos."""

import os
import sys

__version__ = "0.1.0"


def _omp_static() -> None:
    """OMP_DYNAMIC off: oneDNN's threaded kernels wait for as many threads as they asked OpenMP for, and
    with dynamic teams OpenMP may hand them fewer: a training step never ended (a bf16 1x1 convolution's
    backward hung for good, deaf to SIGTERM, on 2026-12-05). OpenMP reads the variable when torch loads
    it; where torch is loaded already (a notebook or script that imported it first), its OpenMP is told
    directly. The thread count is train.threads' (or --threads') either way."""
    if os.environ.get("OMP_DYNAMIC", "").strip().lower() in ("", "false"):
        return
    os.environ["OMP_DYNAMIC"] = "false"
    torch = sys.modules.get("torch")
    if torch is None or not getattr(torch, "__file__", None):
        return
    import ctypes

    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    try:
        names = [n for n in os.listdir(lib) if n.startswith("libgomp")]
    except OSError:  # a torch without its own libraries folder: its OpenMP is not ours to find
        return
    for name in names:
        try:
            ctypes.CDLL(os.path.join(lib, name)).omp_set_dynamic(0)
        except (OSError, AttributeError):  # not a loadable OpenMP: nothing to tell
            pass


_omp_static()
