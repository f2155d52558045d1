"""Choosing the torch device in one place, so no op hard-wires ``.cuda()``."""

from __future__ import annotations

import torch

DEVICE_PREFERENCES = ("auto", "cpu", "cuda", "cuda:<index>")


def pick_device(preference: str = "auto") -> torch.device:
    """Resolve a device preference to a ``torch.device``.

    Args:
        preference: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.

    Returns:
        The device to put models and tensors on.

    Raises:
        ValueError: the preference is not one of the accepted forms.
        RuntimeError: CUDA was requested but is not available (or the index does not exist).

    Example:
        >>> pick_device("cpu")
        device(type='cpu')
    """
    pref = str(preference).strip().lower()
    if pref == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if pref == "cpu":
        return torch.device("cpu")
    if pref == "cuda" or pref.startswith("cuda:"):
        try:
            device = torch.device(pref)
        except RuntimeError as err:
            raise ValueError(f"device: expected one of {DEVICE_PREFERENCES}, received {preference!r}") from err
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device={preference!r} was requested but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}); set device to 'auto' or 'cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device={preference!r} was requested but only {torch.cuda.device_count()} CUDA device(s) "
                f"exist; use an index below that"
            )
        return device
    raise ValueError(f"device: expected one of {DEVICE_PREFERENCES}, received {preference!r}")
