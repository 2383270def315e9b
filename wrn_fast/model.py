"""PLACEHOLDER (the lead is writing the fast model): re-exports the reference."""
import re


def __getattr__(name):
    from . import reference
    return getattr(reference, name)


def create_model(name: str, **kwargs):
    """Build a model by name: 'wrn-28-10', 'wrn-16-8', 'wrn-10-2' (any wrn-DEPTH-WIDTH), 'wide_resnet50_2'."""
    from . import reference
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", name.lower())
    if m:
        return reference.WideResNet(depth=int(m.group(1)), widen_factor=int(m.group(2)), **kwargs)
    if name in ("wide_resnet50_2", "wrn-50-2"):
        return reference.wide_resnet50_2(**kwargs)
    raise ValueError(f"model: unknown name {name!r}; expected 'wrn-DEPTH-WIDTH' or 'wide_resnet50_2'")


def explain(model):
    return "placeholder"
