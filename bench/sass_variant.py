"""What ``bench.sass`` and its compiling worker ``bench.sass_worker`` both need: the
checkout root, the on-disk cache directory and the compile-time ``Variant``. A leaf (no
project imports), so that sass -> sass_worker is the only direction between the two."""
import dataclasses
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.environ.get("WRN_FAST_SASS_CACHE",
                           os.path.join(os.path.expanduser("~"), ".cache", "wrn_fast", "sass"))
KINDS = ("fwd", "dgrad", "wgrad", "bnad_fwd", "bnad_bwd")
CONV_KINDS = ("fwd", "dgrad", "wgrad")
DTYPES = ("bf16", "fp16", "fp32-tf32", "fp32-ieee")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One compile-time variant. Shapes are the layer's: x [n, cin, hw, hw] (square),
    weight [cout, cin, ksize, ksize], padding ksize // 2 (WRN's), stride."""
    kind: str
    dtype: str = "bf16"
    n: int = 128
    cin: int = 160
    cout: int = 160
    hw: int = 32
    stride: int = 1
    ksize: int = 3
    act: str = "relu"          # "identity": no BN-act prologue (the stem)
    dropout: float = 0.0
    residual: bool = False     # fwd only
    stats: bool = False        # fwd only

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.act == "identity" and self.dropout:
            raise ValueError("dropout needs the BN-act prologue (act != 'identity')")

    def label(self):
        extra = "".join([f"+drop{self.dropout:g}" if self.dropout else "", "+res" if self.residual else "",
                         "+stats" if self.stats else ""])
        return (f"{self.kind} {self.dtype} N{self.n} {self.cin}->{self.cout} {self.hw}x{self.hw} "
                f"k{self.ksize}s{self.stride} {self.act}{extra}")
