"""The progress bar of ``fastconv train`` and ``fastconv bench``: tqdm when installed."""

from __future__ import annotations

import sys


class Progress:
    """A tqdm bar on stderr when ``enabled`` and tqdm is installed, else nothing.

    ``terminal_only`` hides the bar when stderr is not a terminal (tqdm's
    ``disable=None``), so a redirected benchmark log holds no bar frames; training
    leaves it off and shows its bar wherever stderr goes.
    """

    def __init__(
        self,
        total: int,
        *,
        enabled: bool = True,
        desc: str | None = None,
        unit: str = "it",
        terminal_only: bool = False,
    ) -> None:
        self.bar = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            leave=False,
            # looked up now, not at import: a test's captured stderr must receive it
            file=sys.stderr,
            dynamic_ncols=True,
            disable=None if terminal_only else False,
        )

    def describe(self, label: str) -> None:
        """Replace the text before the bar (e.g. the case about to run)."""
        if self.bar is not None:
            self.bar.set_description_str(label)

    def step(self, **postfix: str) -> None:
        """One unit done; ``postfix`` (e.g. ``loss="0.1234"``) shows after the bar."""
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(refresh=False, **postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
