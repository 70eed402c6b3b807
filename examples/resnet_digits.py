"""A small ResNet (torchvision's BasicBlock) trained on digits with fastconv.

Shows the residual blocks, global average pooling, SGD with Nesterov momentum and
weight decay, and moving the trained model into PyTorch with ``nn.to_torch``.
Run: ``python examples/resnet_digits.py``
"""

from __future__ import annotations

import numpy as np

from fastconv import data, nn, optim


def resnet(num_classes: int = 10, width: int = 16) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.BasicBlock.make(width, width),  # 8x8
        nn.BasicBlock.make(width, 2 * width, stride=2),  # 4x4, 1x1 conv shortcut
        nn.BasicBlock.make(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


def main() -> None:
    splits = data.load_dataset("digits", seed=0)
    norm = data.Normalizer().fit(splits.train.x)
    x_train, x_val, x_test = (norm.transform(s.x) for s in splits[:3])
    nn.manual_seed(0)
    model = resnet()
    model.summary((1, 8, 8))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.05)
    optimizer = optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    epochs = 8
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loader = data.DataLoader(x_train, splits.train.y, batch_size=32, shuffle=True, seed=0)
    for epoch in range(1, epochs + 1):
        model.train()
        for xb, yb in loader:
            criterion(model(xb), yb)
            model.backward(criterion.backward())
            optimizer.step()
            optimizer.zero_grad()
        scheduler.step()
        model.eval()
        with nn.no_grad():
            val_acc = (model(x_val).argmax(1) == splits.val.y).mean()
        print(f"epoch {epoch}  val acc {val_acc:.4f}")
    with nn.no_grad():
        logits = model(x_test)
    print(f"test accuracy {(logits.argmax(1) == splits.test.y).mean():.4f}")

    try:
        import torch
    except ImportError:
        return
    torch_model = nn.to_torch(model)  # the same architecture in torch.nn, same weights
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(x_test)).numpy()
    same = (torch_logits.argmax(1) == logits.argmax(1)).mean()
    print(
        f"PyTorch predicts the same class for {same:.1%} of the test set "
        f"(max |logit difference| {np.abs(torch_logits - logits).max():.2e})"
    )


if __name__ == "__main__":
    main()
