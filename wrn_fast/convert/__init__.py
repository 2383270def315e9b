"""Checkpoints from the WRN ecosystem -> wrn_fast models.

Formats (``format=``); each names the source code whose architecture the checkpoint needs, since a
state_dict stores weights, not the options a source fixes in its code (activation, BN eps, ...):

    'xternalz'     xternalz/WideResNet-pytorch, RobustBench ``WideResNet``, TRADES: ReLU, BN defaults,
                   every block pre-activated, no conv biases (TRADES' unused ``sub_block1.*`` is dropped
                   with a warning; RobustBench's bias_last=False head loads as fc_bias=False).
                   Aliases: 'robustbench', 'trades'.
    'fixmatch'     kekmodel/FixMatch-pytorch: LeakyReLU(0.1), BN momentum 0.001 eps 1e-5, no conv
                   biases, activate_before_residual=(True, False, False). Alias: 'kekmodel'.
    'torchssl'     TorchSSL: LeakyReLU(0.1), BN momentum 0.001 eps 1e-3, every conv with a bias,
                   activate_before_residual=(True, False, False). STL-10 models: pass first_stride=2.
    'usb'          microsoft/Semi-supervised-learning (semilearn), both layouts, told apart by the keys:
                   2022: as 'torchssl' but every block pre-activated (its blocks ignore
                         activate_before_residual); head ``fc``.
                   0.3.x: stem conv with a bias, block convs without; blocks' BN eps 1e-5, the final
                         BN's 1e-3 (final_bn_eps); activate_before_residual=(True, False, False);
                         head ``classifier``. Alias: 'semilearn'.
    'dm'           RobustBench ``DMWideResNet`` (DeepMind): ``init_conv``, ``layer.i.block.j.{batchnorm_0,
                   conv_0,batchnorm_1,conv_1,shortcut}``, ``batchnorm``, ``logits``; padding='tf_same'.
                   Neither its activation nor (RobustBench registers mean/std as non-persistent buffers)
                   its input normalisation is in the checkpoint: pass activation='silu' (Swish) or
                   'relu', and dataset='cifar10' / 'cifar100' (RobustBench's defaults, announced by a
                   warning) or input_mean=/input_std= (None for none). Older checkpoints that do hold
                   ``mean``/``std`` use those.
    'authors'      szagoruyko/wide-residual-networks functional PyTorch code: a flat dict
                   ``conv0``, ``group0.block0.{conv0,conv1,bn0.*,bn1.*,convdim}``, ``bn.*``, ``fc.*``.
    'native'       a wrn_fast state_dict (reference names): the keys give depth, width, block type and
                   biases; everything else is the constructor's default unless passed. Alias: 'wrn_fast'.
    'torchvision'  torchvision ``wide_resnet50_2`` / ``wide_resnet101_2`` (-> WideResNetBottleneck).
    'auto'         from the keys, and where keys are shared, from what training leaves in them: the
                   blocks that read their raw input (activate_before_residual=False) never use bn1's
                   output, so its affine parameters get no gradient and keep their initial values (bias
                   exactly 0, one weight value for every channel) while every other BatchNorm's move.
                   That tells kekmodel from xternalz and TorchSSL from USB-2022. When it cannot tell
                   (an untrained checkpoint), 'auto' raises and asks for the format.

With an explicit format, keys that contradict it (conv biases, head name, the bn1 evidence) raise.

Modules, lowest first: formats (what each format is), detect (unwrapping a checkpoint, telling its
format), rename (key renaming rules), config (the model configuration the tensors imply), load
(convert_state_dict, load_pretrained).
"""
from .detect import detect_format
from .formats import _FAMILY_OPTIONS, DATASET_NORMALIZATION, FORMATS  # noqa: F401 (_FAMILY_OPTIONS: tests)
from .load import convert_state_dict, load_pretrained
from .rename import dm_key_to_reference, reference_key_to_dm  # noqa: F401 (wrn_fast.compat.robustbench)

__all__ = ["FORMATS", "DATASET_NORMALIZATION", "convert_state_dict", "load_pretrained", "detect_format"]
