"""The C++ sources stay C++17: the lent GPU machines build with torch 2.11 (C++17).

This machine's torch 2.14 compiles extensions as C++20, so a C++20-only construct
(std::bit_cast, designated initialisers, <=>, ...) would build here and break there.
Every csrc/*.cpp is syntax-checked with ``g++ -std=c++17`` against the headers of the
torch 2.13 CPU wheel that lies on these machines' disk (torch 2.13 still accepts
C++17). Skipped where that wheel or g++ is missing.
"""
import glob
import os
import shutil
import subprocess
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = sorted(glob.glob("/opt/wheels/torch-2.13.*-cp311-*.whl"))


@pytest.fixture(scope="module")
def cxx17_torch_include(tmp_path_factory):
    if not WHEELS or shutil.which("g++") is None:
        pytest.skip("needs g++ and the torch 2.13 wheel in /opt/wheels")
    out = tmp_path_factory.mktemp("torch213")
    with zipfile.ZipFile(WHEELS[0]) as z:
        z.extractall(out, [n for n in z.namelist() if n.startswith("torch/include/")])
    return out / "torch" / "include"


@pytest.mark.parametrize("source", sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp"))),
                         ids=os.path.basename)
def test_cpp_source_is_cxx17(cxx17_torch_include, source):
    inc = str(cxx17_torch_include)
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-fopenmp", f"-I{inc}", f"-I{inc}/torch/csrc/api/include",
           f"-I{sysconfig.get_paths()['include']}", "-DTORCH_EXTENSION_NAME=_C",
           "-DTORCH_API_INCLUDE_EXTENSION_H", source]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
