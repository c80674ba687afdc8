"""The names the command line offers before anything heavy is imported: the built-in architectures
and data sets with one line each. The registries (``models``, ``data``) hold the builders; a test
keeps the two in step."""

from __future__ import annotations

# the training modes (training.modes builds them) and the reference code's seed: one definition each
MODES = ("cnn", "ic-only", "sdn", "mixed")
# the modes that start from a trained CNN (a CNN run, or a zoo model's trained weights)
FROM_CNN_MODES = ("ic-only", "mixed")
DEFAULT_SEED = 1221
# how an IC head on transformer tokens reduces them: their mean (the default) or the class token
TOKEN_POOLS = ("mean", "cls")
# exit rules and what an input no IC lets out gets: the deploy runtime's names (one definition)
from shallowdeep_deploy.names import EXIT_RULES, FALLBACKS  # noqa: E402,F401

ARCHITECTURES = {
    "mobilenet": "MobileNet (v1) at 32 or 64 px, 5 ICs (the paper's)",
    "resnet56": "ResNet-56 at 32 or 64 px, 6 ICs (the paper's)",
    "small": "a five-block CNN for the embedded digits and tests, 4 ICs",
    "vgg16_bn": "VGG-16 with batch norm at 32 or 64 px, 6 ICs (the paper's)",
    "wrn32_4": "Wide-ResNet-32-4 at 32 or 64 px, 6 ICs (the paper's)",
}

# any classifier of these zoos, converted (models.zoo builds them)
ZOO_PREFIXES = {
    "torchvision:": "any torchvision classifier, converted to an SDN: torchvision:resnet18",
    "timm:": "any timm classifier (the `zoo` extra), converted to an SDN: timm:resnet18",
}
ZOO_ARCH_HELP = "or a zoo model: torchvision:NAME (torchvision:resnet18) or timm:NAME"

DATASETS = {
    "cifar10": "CIFAR-10 (torchvision; downloads into the data root when online)",
    "cifar100": "CIFAR-100 (torchvision; downloads into the data root when online)",
    "digits": "scikit-learn's bundled 8x8 digits, upscaled to 32 px RGB (offline default)",
    "imagefolder": "any folder with train/<class>/* and test/<class>/* images: imagefolder:PATH",
    "tinyimagenet": "Tiny ImageNet-200 in its official layout (its validation set is the test set)",
}
