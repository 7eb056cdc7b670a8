import sys
from pathlib import Path

# Dissection errors must fail tests, not silently turn into Raw layers.
from scapy.config import conf

conf.debug_dissector = True

sys.path.insert(0, str(Path(__file__).resolve().parent))
