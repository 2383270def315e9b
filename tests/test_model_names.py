"""Model names: one parser (wrn_fast.model.model_architecture) for create_model and the trainer."""
import pytest
import torch

import wrn_fast
import wrn_fast.model
from wrn_fast import reference
from wrn_fast.data import InputError
from wrn_fast.model import WideResNet, WideResNetBottleneck, model_architecture
from wrn_fast.training.models import arch_kwargs_from_name, build_model, check_architecture


@pytest.mark.parametrize("name, arch", [
    ("wrn-28-10", {"depth": 28, "widen_factor": 10}),
    ("WRN_16_8", {"depth": 16, "widen_factor": 8}),
    ("wide_resnet50_2", {"layers": (3, 4, 6, 3)}),
    ("wrn-50-2", {"layers": (3, 4, 6, 3)}),  # the ImageNet bottleneck WRN, not a 6n+4 CIFAR one
    ("wide_resnet101_2", {"layers": (3, 4, 23, 3)}),
])
def test_names_give_one_architecture_everywhere(name, arch):
    assert model_architecture(name) == arch
    assert arch_kwargs_from_name(name) == arch
    model = wrn_fast.create_model(name, num_classes=3) if "depth" in arch else None
    if model is not None:
        assert isinstance(model, WideResNet) and (model.depth, model.widen_factor) == (arch["depth"], arch["widen_factor"])


def test_trainer_builds_wrn_50_2_as_the_bottleneck_model():
    # the trainer used to read 'wrn-50-2' as a CIFAR WRN (and pass it dropout_rate)
    model, kwargs = build_model("wrn-50-2", num_classes=5, in_channels=3)
    assert isinstance(model, WideResNetBottleneck) and "dropout_rate" not in kwargs
    with pytest.raises(InputError, match="--dropout"):
        build_model("wrn-50-2", num_classes=5, in_channels=3, dropout=0.3)


def test_architecture_checks_use_the_same_names():
    check_architecture("ck.pt", {"layers": (3, 4, 6, 3)}, "wrn-50-2")
    with pytest.raises(InputError, match="layers"):
        check_architecture("ck.pt", {"layers": (3, 4, 23, 3)}, "wrn-50-2")
    with pytest.raises(InputError, match="bottleneck"):
        check_architecture("ck.pt", {"layers": (3, 4, 6, 3)}, "wrn-28-10")
    with pytest.raises(InputError, match="CIFAR-style"):
        check_architecture("ck.pt", {"depth": 28, "widen_factor": 10}, "wide_resnet50_2")
    assert arch_kwargs_from_name("resnet18") == {}
    with pytest.raises(ValueError, match="unknown name"):
        model_architecture("resnet18")


@pytest.mark.parametrize("name", list(reference.NAMED_ARCHITECTURES))
def test_named_constructors_of_both_models_build_the_tables_network(name):
    """wrn_28_10, ..., wide_resnet101_2: one table builds the reference's and the fast model's
    constructors, with the same arguments; keywords override the table's."""
    arguments, _ = reference.NAMED_ARCHITECTURES[name]
    fast_cls, ref_cls = ((WideResNetBottleneck, reference.WideResNetBottleneck) if "layers" in arguments
                         else (WideResNet, reference.WideResNet))
    with torch.device("meta"):
        ours, spec = getattr(wrn_fast, name)(num_classes=7), getattr(reference, name)(num_classes=7)
    assert type(ours) is fast_cls and type(spec) is ref_cls
    assert all(getattr(m, key) == value for m in (ours, spec) for key, value in arguments.items())
    assert ours.state_dict().keys() == spec.state_dict().keys()
    assert ours.fc.out_features == spec.fc.out_features == 7
    assert getattr(wrn_fast, name).__name__ == name and name in wrn_fast.model.__all__
