import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def pytest_collection_modifyitems(config, items):
    # Tests marked `gpu` run only where CUDA exists; on CI (no GPU) they are reported as skipped.
    skip = pytest.mark.skip(reason="needs CUDA (run on the device machine)")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
