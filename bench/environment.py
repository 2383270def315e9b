"""Environment capture: the machine, the build and the command a number was measured with."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
from typing import Dict, List, Optional

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cmd: List[str]) -> Optional[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
        if out.returncode == 0:
            return out.stdout.strip()
    except Exception:
        pass
    return None


def git_info() -> Dict[str, object]:
    """Commit, dirty flag and branch: from git here, from bench/.session_commit on a machine without .git."""
    from . import session

    info = session.commit_info(REPO)
    return {k: info.get(k) for k in ("commit", "short_commit", "dirty", "branch", "source", "tree_matches")}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except Exception:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "device"


def capture_env(device: torch.device, argv: List[str]) -> Dict[str, object]:
    """Everything needed to trace a number back to a machine, a build and a command."""
    env: Dict[str, object] = {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "bench.run", *argv]),
        "argv": list(argv),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device_type": device.type,
        "device_name": device_name(device),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
        "num_threads": torch.get_num_threads(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        env["triton"] = None
        env["triton_error"] = f"{type(e).__name__}: {e}"
    try:
        import numpy

        env["numpy"] = numpy.__version__
    except Exception:
        env["numpy"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu_memory_bytes"] = int(props.total_memory)
        env["gpu_sm_count"] = int(props.multi_processor_count)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["gpu_l2_bytes"] = int(getattr(props, "L2_cache_size", 0) or 0)
        smi = _run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                    "--format=csv,noheader", f"--id={device.index or 0}"])
        if smi:
            parts = [p.strip() for p in smi.split(",")]
            env["driver"] = parts[0]
            env["gpu_max_sm_clock"] = parts[1] if len(parts) > 1 else None
            env["gpu_power_limit"] = parts[2] if len(parts) > 2 else None
        else:
            env["driver"] = None
    else:
        env["gpu_memory_bytes"] = None
        env["driver"] = None
    env.update({"git_" + k: v for k, v in git_info().items()})
    try:
        import wrn_fast

        info = wrn_fast.build_info()
        env["wrn_fast_version"] = getattr(wrn_fast, "__version__", None)
        env["wrn_fast_extension_loaded"] = info.get("extension_loaded")
        env["wrn_fast_extension_cuda"] = info.get("extension_cuda_kernels")
        env["wrn_fast_extension_error"] = info.get("extension_error")
        env["wrn_fast_backend"] = wrn_fast.get_backend()
    except Exception as e:  # noqa: BLE001
        env["wrn_fast_error"] = f"{type(e).__name__}: {e}"
    return env
