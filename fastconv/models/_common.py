"""What the zoo's models share: parameter-free steps that torchvision writes as function
calls (``torch.flatten``, ``F.relu``, ``F.adaptive_avg_pool2d``), and its initialisation.

A step torchvision calls as a function is no child module there, so here it is no child
either: the layer object that does it (and keeps what its backward needs) is stored as a
plain attribute with :func:`attach_step`.  Module names, ``state_dict`` keys and
``summary()`` rows then stay torchvision's.
"""

from __future__ import annotations

from .. import nn


def attach_step(owner: nn.Module, name: str, layer: nn.Module) -> None:
    """Keep ``layer`` on ``owner`` without registering it as a child module."""
    object.__setattr__(owner, name, layer)


def init_conv_kaiming_fan_out(model: nn.Module, linear_std: float | None = None) -> None:
    """torchvision's ResNet / VGG / MobileNetV2 initialisation.

    Convolutions: kaiming_normal_(mode="fan_out", nonlinearity="relu"), zero bias;
    batch norms: weight 1, bias 0; linear layers: N(0, ``linear_std``) and zero bias, or
    their default initialisation when ``linear_std`` is None (ResNet).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)
