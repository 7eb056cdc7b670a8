"""OpenVPN traffic in captures: which flows are OpenVPN, how each is wrapped,
what each packet says, and the TLS inside the control channel.

The library's entry point is ``ovpndiag.dissect.open`` (``pipeline.open``):

    from ovpndiag import dissect

    with dissect.open("vpn.pcap", tls_auth="ta.key") as run:
        for record in run.records():
            print(record.frame, record.opcode, record.hmac_valid)
"""

_PIPELINE = ("open", "LISTING", "Dissection", "CaptureFile")


def __getattr__(name):
    """``open`` and friends from ``pipeline``, imported on first use (importing a module
    of this package, e.g. for a display filter, does not load the whole reader)."""
    if name in _PIPELINE:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
