"""Transfer learning with frozen layers: pre-train on digits 0-4, fine-tune on 5-9.

The convolutional features learnt on the first five digits are frozen
(``requires_grad_(False)``: no weight gradient is computed for them and the optimizer
leaves them alone) and only a new linear head is trained on the other five digits.
With ``needs_input_grad = False`` on the head, the backward pass stops there, so the
frozen layers cost a forward pass only.
Run: ``python examples/transfer_learning.py``
"""

from __future__ import annotations

from fastconv import data, nn, optim


def fit(model, x, y, epochs, lr):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.Adam(params, lr=lr)
    criterion = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for xb, yb in data.DataLoader(x, y, batch_size=32, shuffle=True, seed=0):
            criterion(model(xb), yb)
            model.backward(criterion.backward())
            optimizer.step()
            optimizer.zero_grad()


def accuracy(model, x, y):
    model.eval()
    with nn.no_grad():
        return float((model(x).argmax(1) == y).mean())


def main() -> None:
    splits = data.load_dataset("digits", seed=0)
    norm = data.Normalizer().fit(splits.train.x)
    (x_train, y_train), (x_test, y_test) = (
        (norm.transform(s.x), s.y) for s in (splits.train, splits.test)
    )
    low_train, low_test = y_train < 5, y_test < 5

    nn.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    model = nn.Sequential(features, nn.Linear(32 * 2 * 2, 5))
    fit(model, x_train[low_train], y_train[low_train], epochs=6, lr=2e-3)
    print(f"digits 0-4: test accuracy {accuracy(model, x_test[low_test], y_test[low_test]):.4f}")

    features.requires_grad_(False)  # freeze the feature extractor
    model = nn.Sequential(features, nn.Linear(32 * 2 * 2, 5))  # a new head
    model[1].needs_input_grad = False  # nothing to back-propagate into the frozen part
    print(
        f"trainable parameters: {model.num_parameters(trainable_only=True):,} of "
        f"{model.num_parameters():,}"
    )
    before = features.state_dict()
    fit(model, x_train[~low_train], y_train[~low_train] - 5, epochs=6, lr=5e-3)
    acc = accuracy(model, x_test[~low_test], y_test[~low_test] - 5)
    print(f"digits 5-9 with frozen features: test accuracy {acc:.4f}")
    unchanged = all((before[k] == v).all() for k, v in features.state_dict().items())
    print(f"frozen features unchanged: {unchanged}")


if __name__ == "__main__":
    main()
