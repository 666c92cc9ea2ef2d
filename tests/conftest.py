import pytest
import torch

# The suite's networks are tiny: a second intra-op thread gains nothing and, on a shared
# 2-core machine, two threads spinning against each other were measured up to 30× slower.
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "hosts: runs a real GIMP 3 / Krita 5 in a Debian trixie chroot")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture
def tiny_generator():
    """A 32-px generator with small channels and fixed random weights."""
    from dragd.daemon.model.stylegan2 import Generator

    torch.manual_seed(1234)
    return Generator(resolution=32, z_dim=32, w_dim=32, channel_base=256, channel_max=32,
                     mapping_layers=2).eval()


# The shared end-to-end fixtures: a real `dragd serve` process with a tiny model.
from daemon_fixture import running_daemon, tiny_model_path  # noqa: E402,F401
