"""Build wrn_fast and its C++/CUDA extension ``wrn_fast._C``.

Knobs (environment variables):
  WRN_FAST_CUDA=1|0     force / skip the CUDA kernels (default: build them when
                        torch is a CUDA build and nvcc is found; no GPU needed).
  TORCH_CUDA_ARCH_LIST  CUDA archs (default "8.0;9.0": Ampere and Hopper).
  WRN_FAST_DEBUG=1      -O0 -g builds.
  MAX_JOBS              parallel compile jobs (ninja).

Install with ``pip install --no-build-isolation .`` so that the extension is
compiled against the torch already installed (an isolated build env would
pull a different torch and break the ABI).
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

import torch

# torch guesses CUDA_HOME from `which nvcc`; a wrapper script such as
# /usr/local/bin/nvcc makes that /usr/local, which has no libcudart to link.
# Prefer the real toolkit when it is there (an explicit CUDA_HOME wins).
if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    env = os.environ.get("WRN_FAST_CUDA")
    if env is not None:
        return env not in ("0", "false", "False", "")
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))
    return torch.version.cuda is not None and bool(nvcc)


def _extension():
    if os.environ.get("WRN_FAST_REQUIRE_CUDA") == "1" and not _want_cuda():
        raise RuntimeError(
            "WRN_FAST_REQUIRE_CUDA=1 but the CUDA kernels would not be built: need a CUDA build of "
            f"torch (torch.version.cuda={torch.version.cuda}) and nvcc (CUDA_HOME={CUDA_HOME})"
        )
    debug = os.environ.get("WRN_FAST_DEBUG", "0") == "1"
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    cxx += ["-fopenmp"]  # the C++ standard comes from torch (C++20 for torch >= 2.13)
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    if _want_cuda() and cuda_sources:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        # Some ATen CUDA headers include cusparse.h etc., shipped by the pip
        # nvidia-* wheels rather than the system toolkit.
        include_dirs = []
        try:
            import nvidia  # noqa: F401
            for base in nvidia.__path__:
                for inc in glob.glob(os.path.join(base, "*", "include")):
                    include_dirs.append(inc)
        except ImportError:
            pass
        return CUDAExtension(
            "wrn_fast._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("WRN_FAST_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math"]},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        "wrn_fast._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"]
    )


setup(
    name="wrn_fast",
    version="0.1.0",
    description="Wide Residual Networks with fused Triton / C++ / CUDA kernels",
    python_requires=">=3.9",
    # Every package under wrn_fast/ (ops, training, compat, ...), found rather than
    # listed so that a new subpackage cannot be left out of a non-editable install.
    packages=["wrn_fast"] + ["wrn_fast." + p for p in find_packages("wrn_fast")] + ["wrn_fast.kernels"],
    # kernels/ is installed as wrn_fast.kernels: the top-level name `kernels`
    # belongs to another project on PyPI.
    package_dir={"wrn_fast": "wrn_fast", "wrn_fast.kernels": "kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    install_requires=["torch>=2.4", "numpy"],
    extras_require={"triton": ["triton"], "train": ["tqdm", "matplotlib", "scikit-learn"]},
    entry_points={"console_scripts": ["wrn-fast=wrn_fast.__main__:main"]},
)
