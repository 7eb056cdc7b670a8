"""``analyze`` as a library: capture files in, one analysis dict per session out.

    from ovpndiag import analyze

    with analyze.open(["vpn.pcap"], tls_auth="ta.key", auth="SHA256") as run:
        for session in run.sessions():      # in the order --sessions lists them
            print(session["client"], session["verdict"], session["evidence"])

(``ovpndiag analyze --json`` prints these dicts; README lists their keys.)

The keys, ``auth`` and ``key_direction`` (and a ``config``) are the server's: they
verify what the client sent and, for a client the server never answered, say
whether its key, key direction or digest is wrong (``keytrials``). ``keylog``: an
NSS key log (``ovpndiag handshake --keylog`` writes one) to read inside TLS.
Errors in what the user gave raise at ``open``, as ``dissect.open``'s do
(keylog.KeyLogError for the key log).
"""

from typing import Optional, Sequence

from ..dissect.pipeline import Dissection


def open(paths, *, ports: Sequence[int] = (), wrapping: Optional[str] = None, auth: Optional[str] = None,
         tls_auth=None, tls_crypt=None, tls_crypt_v2=None, key_direction=None, config=None, keylog=None,
         jobs: Optional[int] = None, tune_gc: bool = False):
    """An ``Analysis``: a ``dissect.pipeline.Dissection`` whose ``sessions()`` are
    analyses (see judge), file after file."""
    import os

    from ..dissect.pipeline import collect_less, reader_options
    from ..profile import read_profile
    from ..protocol import digest_name
    from ..settings import SettingsError
    from .trace import Context, trace_class

    options, keys_given = reader_options(ports=ports, wrapping=wrapping, tls_auth=tls_auth,
                                         tls_crypt=tls_crypt, tls_crypt_v2=tls_crypt_v2, config=config,
                                         sessions=True)
    profile = read_profile(config) if config else None
    digest = auth or (profile.auth if profile is not None else None)
    direction = key_direction if key_direction is not None else (
        profile.key_direction if profile is not None else None)
    try:
        digest = digest_name(digest) if digest else None
    except ValueError as error:
        raise SettingsError(str(error)) from None
    log = None
    if keylog:
        from .keylog import KeyLog

        log = KeyLog.read(keylog)
    # The digest and direction given are the server's: what its clients send is read as
    # it is (a client with another digest is what the key trials are for), and each
    # packet's direction is worked out.
    from ..dissect.infer import candidates_for

    options.candidates = candidates_for(wrapping, None) if wrapping else None
    keys = options.keys
    keys.client_key_direction = None
    context = Context(keys=None if keys.empty else keys, digest=digest,
                      server_direction=None if direction is None else str(direction), keylog=log)
    options.session_class = trace_class(context)
    if tune_gc:
        collect_less()
    return Analysis([paths] if isinstance(paths, (str, bytes, os.PathLike)) else list(paths), options,
                    keys_given, jobs)


def analyses(capture):
    """Read one ``CaptureFile`` of an analysis and give its sessions' analyses, settled
    (settle.settle); then ``capture.error`` says whether it was read to its end."""
    from ..dissect.pipeline import COUNT
    from .fastcount import install
    from .settle import settle

    trace = capture.run.options.session_class
    trace.fast_path = staticmethod(install)  # (no one reads the Records: the readers may skip them)
    try:
        for _packets in capture.batches(COUNT):
            pass
    finally:
        trace.fast_path = None
    return settle(capture.summaries())


class Analysis(Dissection):
    """A dissection whose sessions are analyses, settled file by file."""

    def sessions(self):
        for capture in self:
            yield from analyses(capture)
