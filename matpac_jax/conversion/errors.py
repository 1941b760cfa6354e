"""Errors shared by the checkpoint importers."""
from __future__ import annotations

from collections.abc import Mapping, Sequence


def _shape(x):
    return x if isinstance(x, str) else tuple(x)


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys do not match the model: lists every problem at once.

    Official loaders use `strict=False` and silently skip keys; we refuse to
    load instead, and name all missing, unexpected and mis-shaped keys in one
    message so a user fixes a conversion in one round.
    """

    def __init__(
        self,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        mismatched: Sequence[tuple[str, tuple, tuple]] = (),
        context: str = "",
    ):
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        # (key, expected, found): shapes, or a short description for other checks.
        self.mismatched = sorted(((k, _shape(a), _shape(b)) for k, a, b in mismatched),
                                 key=lambda m: m[0])
        self.context = context
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [f"checkpoint does not match the model{': ' + self.context if self.context else ''}"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}):")
            lines += [f"    {k}" for k in self.missing]
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}):")
            lines += [f"    {k}" for k in self.unexpected]
        if self.mismatched:
            lines.append(f"  mismatched ({len(self.mismatched)}): key: expected vs checkpoint")
            lines += [f"    {k}: {a} vs {b}" for k, a, b in self.mismatched]
        return "\n".join(lines)


def check_keys(
    expected: Mapping[str, tuple],
    found: Mapping[str, tuple],
    context: str = "",
) -> None:
    """Raise one CheckpointMismatchError naming every key/shape problem."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        (k, tuple(expected[k]), tuple(found[k]))
        for k in expected
        if k in found and tuple(expected[k]) != tuple(found[k])
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, context)
