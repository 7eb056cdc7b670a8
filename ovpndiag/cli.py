"""The ``ovpndiag`` command line: thin click commands over the library.

Commands import what they need inside their own bodies, so ``--help`` and
``--version`` stay instant.
"""

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ovpndiag")
def main():
    """Packet-level OpenVPN diagnostics: craft and check OpenVPN packets,
    read captures, probe servers."""
