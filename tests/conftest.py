import sys
from pathlib import Path

# Dissection errors must fail tests, not silently turn into Raw layers.
from scapy.config import conf

conf.debug_dissector = True

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest


@pytest.fixture(scope="session")
def servers():
    """Real OpenVPN 2.6 servers on loopback, one per configuration, started on first use."""
    from servers import ServerPool

    pool = ServerPool()
    yield pool
    pool.stop_all()
