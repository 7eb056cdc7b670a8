"""The machinery behind captures/record.py, one job per module.

record.py keeps the scenario table (what to record) and the command line; this
package knows how:

* ``scenario``  - the table's row types (Scenario, Side, Derived) and the timings
* ``layout``    - where files go: captures/ itself, or another folder (``--out``)
* ``pki``       - the throw-away test PKI and static keys in captures/keys/
* ``procs``     - starting, stopping and waiting for processes (log patterns)
* ``openvpn``   - openvpn command lines for a scenario's server and client
* ``netns``     - network namespaces, veth links, the relays' start-up
* ``relays``    - the VLAN trunk and the rebinding UDP NAT (a script of their own)
* ``pcapfile``  - a small pcap/pcapng reader down to OpenVPN packets, for the checks
* ``checks``    - what a scenario's capture must show before it is kept
* ``run``       - one scenario's recording, start to finish
* ``docs``      - manifest.json and README.md

Standard library and ``cryptography`` only (ovpndiag itself is not imported:
the captures check it, not the other way round).
"""
