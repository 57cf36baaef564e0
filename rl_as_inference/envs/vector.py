"""Placeholder: replaced by the vector-env implementation."""


class FunctionalVectorEnv:  # pragma: no cover
    pass


def make_vec(*args, **kwargs):  # pragma: no cover
    raise NotImplementedError
