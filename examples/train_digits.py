"""Train a small CNN on scikit-learn's digits with fastconv, written the PyTorch way.

The same thing as ``fastconv train`` but as an explicit loop, to show the API:
layers, a loss, an optimizer, and the explicit ``backward``.  Needs scikit-learn
(``pip install 'fastconv[examples]'``).  Run: ``python examples/train_digits.py``
"""

from __future__ import annotations

import time

from fastconv import data, nn, optim


def main() -> None:
    splits = data.load_dataset("digits", seed=0)  # stratified 70/10/20 split
    norm = data.Normalizer().fit(splits.train.x)  # statistics of the training set only
    x_train, x_val, x_test = (norm.transform(s.x) for s in splits[:3])

    nn.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4x4 -> 2x2
        nn.Flatten(),
        nn.Dropout(0.25),
        nn.Linear(64 * 2 * 2, 128),
        nn.ReLU(),
        nn.Dropout(0.25),
        nn.Linear(128, 10),
    )
    model.summary((1, 8, 8))
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=2e-3)
    epochs = 10
    scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loader = data.DataLoader(x_train, splits.train.y, batch_size=32, shuffle=True, seed=0)

    for epoch in range(1, epochs + 1):
        model.train()
        start = time.perf_counter()
        for xb, yb in loader:
            logits = model(xb)  # forward, saves what backward needs
            loss = criterion(logits, yb)  # a Python float
            model.backward(criterion.backward())  # accumulates every param.grad
            optimizer.step()
            optimizer.zero_grad()
        scheduler.step()
        model.eval()
        with nn.no_grad():  # evaluation saves nothing
            val_acc = (model(x_val).argmax(1) == splits.val.y).mean()
        print(
            f"epoch {epoch:2d}  last loss {loss:.4f}  val acc {val_acc:.4f}  "
            f"{time.perf_counter() - start:.2f} s"
        )

    with nn.no_grad():
        test_acc = (model(x_test).argmax(1) == splits.test.y).mean()
    print(f"test accuracy {test_acc:.4f}")
    nn.save_weights(model, "digits_cnn.npz")  # PyTorch state_dict keys and shapes
    print(
        "weights saved to digits_cnn.npz; load them into torch with "
        "torch_model.load_state_dict(nn.to_torch_state_dict(nn.load_weights(path)))"
    )


if __name__ == "__main__":
    main()
