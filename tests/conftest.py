import pyro
import pytest
import torch

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# The suite runs thousands of small-tensor ops: intra-op threads only add contention (measured 30x
# slower per SVI step with 2 threads on a loaded 2-core machine), and one thread keeps runs repeatable.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    # Tests marked `gpu` run only where CUDA exists; on CI (no GPU) they are reported as skipped.
    skip = pytest.mark.skip(reason="needs CUDA (run on the device machine)")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def user_envs():
    """Torch envs registered with envs.register are process-wide: each test's are removed after it."""
    from rl_as_inference.envs import registry

    before = dict(registry._REGISTERED)
    yield
    registry._REGISTERED.clear()
    registry._REGISTERED.update(before)


@pytest.fixture(autouse=True)
def fresh_param_store():
    """Every test starts and ends with an empty Pyro parameter store (it is global state)."""
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
