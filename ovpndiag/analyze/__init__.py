"""``ovpndiag analyze``: why each captured OpenVPN handshake failed, session by session.

``open`` (in ``run``) reads captures and gives one analysis per session: ``trace``
keeps what a session did while it is read, ``judge`` names its verdict (from
``ovpndiag.verdicts``) with evidence citing frames, ``timeline`` lists its landmarks;
``keytrials`` (the server's key against unanswered packets), ``certcheck``
(certificates in clear) and the key log's decryption (``keylog``, ``tlsdecrypt``,
``inner``) give them facts.
"""

from .run import open  # noqa: F401  (ovpndiag.analyze.open)
