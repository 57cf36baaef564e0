"""Placeholder: replaced by the Gymnasium adapter."""


def from_gymnasium(*args, **kwargs):  # pragma: no cover
    raise NotImplementedError
