"""``ovpndiag analyze``: why each captured OpenVPN handshake failed, session by session.

``open`` (in ``run``) reads captures and gives one analysis per session: ``trace``
keeps what a session did while it is read (its ``landmarks``, transport ``events``),
``judge`` names its verdict (from ``ovpndiag.verdicts``) with evidence citing frames,
``settle`` decides across sessions what holds only if a session is over, ``timeline``
lists its landmarks;
``keytrials`` (the server's key against unanswered packets), ``certcheck``
(certificates in clear) and the key log's decryption (``keylog``, ``tlsdecrypt``,
``inner``) give them facts.
"""



def open(paths, **options):
    """``run.open``: an analysis of capture files (imported when called, so that importing
    one of this package's modules does not load the dissection)."""
    from .run import open as open_analysis

    return open_analysis(paths, **options)
