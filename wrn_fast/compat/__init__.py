"""Drop-in replacements for the WRN code people use: change one import line.

=========================  ==========================================================================
upstream                   wrn_fast
=========================  ==========================================================================
xternalz wideresnet.py     ``from wrn_fast.compat.xternalz import WideResNet``
RobustBench wide_resnet    ``from wrn_fast.compat.robustbench import WideResNet``
RobustBench dm_wide_resnet ``from wrn_fast.compat.robustbench import DMWideResNet, Swish``
TRADES models/wideresnet   ``from wrn_fast.compat.trades import WideResNet``
TorchSSL models/nets/wrn   ``from wrn_fast.compat.torchssl import build_WideResNet, WideResNet``
USB semilearn.nets.wrn     ``from wrn_fast.compat.usb import wrn_28_2, wrn_28_8, WideResNet``
kekmodel FixMatch          ``import wrn_fast.compat.fixmatch as models``
=========================  ==========================================================================

Each class has the upstream constructor (names, order, defaults), state_dict keys, initialisation and
forward signature, and is a fast ``wrn_fast.WideResNet`` (fused forward, same numbers as the
reference). Import the submodule you need; this package imports none of them.
"""
