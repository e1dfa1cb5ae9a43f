"""Route mlx's CPU matrix products to numpy's bundled OpenBLAS (Linux x86_64 only).

The Linux `mlx[cpu]` wheel ships the netlib reference BLAS: a float32 GEMM runs at about
4 GFLOP/s here, and OpenBLAS (already on disk inside numpy's wheel) at about 60. OpenBLAS
there exports only prefixed ILP64 names (`scipy_cblas_sgemm64_`), so a ten-line C shim
defines the `cblas_sgemm` that libmlx imports and widens its int arguments. Loaded with
RTLD_GLOBAL before mlx's first matrix product, the shim wins symbol lookup because libmlx
binds its imports lazily. Whole demo pre-training steps get about 2x faster (attention
and SiLU, not GEMM, dominate what is left).

Everything is best effort: no compiler, no OpenBLAS, macOS (Accelerate is fast already),
AUTORESEARCH_FAST_BLAS=0, or mlx having bound its BLAS already all leave mlx as it was,
and `enable()` says so by returning False. Results agree with the reference BLAS to
float32 rounding.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SHIM_C = r"""
#include <stdint.h>
typedef void (*sgemm64_t)(int, int, int, int64_t, int64_t, int64_t, float, const float *,
                          int64_t, const float *, int64_t, float, float *, int64_t);
static sgemm64_t real_sgemm;
static int64_t calls;
void fastblas_init(void *fn) { real_sgemm = (sgemm64_t)fn; }
int64_t fastblas_calls(void) { return calls; }
void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta,
                 float *c, int ldc) {
  __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
  real_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
"""

_state: dict[str, object] = {}


def _default_build_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "council-autoresearch"


def _openblas_path() -> Path | None:
    try:
        import numpy
    except ImportError:
        return None
    libs = Path(numpy.__file__).resolve().parent.parent / "numpy.libs"
    found = sorted(glob.glob(str(libs / "libscipy_openblas64_*.so")))
    return Path(found[0]) if found else None


def _compile_shim(build_dir: Path) -> Path | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    digest = hashlib.sha256(SHIM_C.encode()).hexdigest()[:12]
    target = build_dir / f"fastblas-{digest}.so"
    if target.is_file():
        return target
    build_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=build_dir) as tmp:
        src, out = Path(tmp) / "shim.c", Path(tmp) / "shim.so"
        src.write_text(SHIM_C)
        done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(out), str(src)],
                              capture_output=True, timeout=60)
        if done.returncode != 0:
            return None
        os.replace(out, target)  # atomic: a concurrent builder's identical file is fine
    return target


def _probe(shim: ctypes.CDLL) -> bool:
    """True when a real mlx matrix product went through the shim and agrees with numpy."""
    import mlx.core as mx
    import numpy as np

    before = shim.fastblas_calls()
    a = np.random.default_rng(0).standard_normal((33, 17)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((17, 9)).astype(np.float32)
    got = np.array(mx.array(a) @ mx.array(b))
    return shim.fastblas_calls() > before and bool(np.allclose(got, a @ b, atol=1e-4))


def enable(build_dir: Path | None = None) -> bool:
    """Switch this process's mlx CPU GEMM to OpenBLAS if possible; True when it took."""
    if "enabled" in _state:
        return bool(_state["enabled"])
    ok = False
    if (sys.platform.startswith("linux") and os.environ.get("AUTORESEARCH_FAST_BLAS", "1") != "0"):
        try:
            ok = _enable(build_dir or _default_build_dir())
        except (OSError, subprocess.SubprocessError, AttributeError):
            ok = False
    _state["enabled"] = ok
    return ok


def _enable(build_dir: Path) -> bool:
    blas = _openblas_path()
    shim_path = _compile_shim(build_dir) if blas else None
    if not blas or not shim_path:
        return False
    lib = ctypes.CDLL(str(blas), mode=ctypes.RTLD_GLOBAL)
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        # One thread: these matrices are small, and the cores are shared with mlx's own.
        lib.scipy_openblas_set_num_threads64_(ctypes.c_int(1))
    shim = ctypes.CDLL(str(shim_path), mode=ctypes.RTLD_GLOBAL)
    shim.fastblas_calls.restype = ctypes.c_int64
    shim.fastblas_init(ctypes.cast(lib.scipy_cblas_sgemm64_, ctypes.c_void_p))
    _state["shim"] = shim  # keep the library loaded for the life of the process
    return _probe(shim)
