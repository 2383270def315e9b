"""setup.py installs every Python package of the tree (a non-editable ``pip install .``
must not leave out a subpackage such as wrn_fast.training or wrn_fast.compat)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CAPTURE = r"""
import json, sys, setuptools
captured = {}
setuptools.setup = lambda **kw: captured.update(kw)
sys.argv = ["setup.py", "--name"]
src = open("setup.py").read()
exec(compile(src, "setup.py", "exec"), {"__name__": "__main__", "__file__": "setup.py"})
print(json.dumps({"packages": captured["packages"], "package_dir": captured["package_dir"]}))
"""


def _setup_kwargs():
    # Only the package list is read: no CUDA probing (and CI's WRN_FAST_REQUIRE_CUDA=1 would make
    # setup.py refuse WRN_FAST_CUDA=0).
    env = dict(os.environ, WRN_FAST_CUDA="0")
    env.pop("WRN_FAST_REQUIRE_CUDA", None)
    out = subprocess.run([sys.executable, "-c", _CAPTURE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"running setup.py to read its package list failed:\n{out.stderr[-2000:]}"
    import json
    return json.loads(out.stdout.strip().splitlines()[-1])


def _source_dir(package, package_dir):
    # The longest package_dir prefix maps a package to its directory (setuptools' rule).
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in package_dir:
            return os.path.join(package_dir[prefix], *parts[i:])
    return os.path.join(*parts)


def test_every_package_directory_is_installed():
    kw = _setup_kwargs()
    installed = {os.path.normpath(_source_dir(p, kw["package_dir"])) for p in kw["packages"]}
    on_disk = set()
    for top in ("wrn_fast", "kernels"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            if "__init__.py" in filenames:
                on_disk.add(os.path.normpath(os.path.relpath(dirpath, ROOT)))
    assert {"wrn_fast/training", "wrn_fast/compat", "wrn_fast/ops", "kernels"} <= on_disk
    missing = sorted(on_disk - installed)
    assert not missing, f"setup.py does not install these packages: {missing}"
    for p in installed:
        assert os.path.isfile(os.path.join(ROOT, p, "__init__.py")), f"setup.py lists {p}, which is not a package"
