"""Compile-only launches of the kernels without a GPU: a Triton driver that reports a CUDA
target, and the launchers' device checks relaxed (CPU tensors accepted, GPU decisions kept).

Used by bench.sass's worker and by tests/_triton_aot.py. No project imports: the test
script loads this file directly so that its ``wrn_fast`` stays the installed /
extension-free one."""
import sys


def install_stand_in_driver(capability=90):
    """Point Triton's JIT at a driver that reports ``cuda:capability`` without a GPU, so
    launches can compile (the technique of tests/_triton_aot.py)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class _StandInDriver:
        """Just enough of a driver for Triton's JIT to pick a target and compile."""

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", capability, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

    driver.set_active(_StandInDriver())


def relax_device_checks(conv, bad):
    """The launchers refuse CPU tensors unless they believe they run in the interpreter;
    let them believe it, but make the decisions a GPU launch would make (dot precision,
    elementwise tile sizes) with the flag off. The flags live in ``conv`` itself (kernels
    before the split of bn_act_conv.py) or in its package's ``conv_config``."""
    mods = [conv, bad]
    config = sys.modules.get(conv.__name__.rsplit(".", 1)[0] + ".conv_config")
    if config is not None:
        mods.append(config)
    flags = [(m, n) for m in mods for n in ("INTERPRET", "_INTERPRET") if hasattr(m, n)]

    def gpu_decision(fn):
        def wrapped(*a, **k):
            saved = [(m, n, getattr(m, n)) for m, n in flags]
            for m, n, _ in saved:
                setattr(m, n, False)
            try:
                return fn(*a, **k)
            finally:
                for m, n, val in saved:
                    setattr(m, n, val)
        return wrapped

    for mod in mods:
        for name in ("_dot_modes", "_config"):
            if hasattr(mod, name):
                setattr(mod, name, gpu_decision(getattr(mod, name)))
    for m, n in flags:
        setattr(m, n, True)
