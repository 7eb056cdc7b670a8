"""Why a captured session ended where it did: a SessionTrace -> its analysis dict.

The session's landmarks (``landmarks``: resets, ClientHello, each side's TLS flight,
alerts, the messages after the handshake, who sent what the other never acknowledged,
retransmissions), its data and transport events say how far it got; the first rule
below that fits names the verdict (a name of ``ovpndiag.verdicts``), with evidence
lines that cite frames. ``settle`` then decides, across a capture's sessions, the
verdicts that hold only if the session is over.

The rules, most specific first (README, "ovpndiag analyze", says the same for users):

1. Data both ways: ``ok``. One way only, with the session over: ``data-one-way``.
2. Nothing from the server: an ICMP port unreachable or a TCP RST/refusal for the
   client is ``port-closed``; with the server's key the key trials name a wrong key,
   key direction or digest, or no tls-auth at all; else, once the client has resent its
   reset or gone quiet, ``server-silent``.
3. A TLS alert in clear names the side that refused: from the client while the
   server's certificate is in flight, ``server-certificate-rejected``; from the server
   after the client's flight, ``client-certificate-rejected``; from the server after
   the ClientHello, ``client-hello-rejected``; else ``tls-error``.
4. The server answered the reset but not the ClientHello: ``client-hello-rejected``.
5. The server sent its flight and the client sent nothing after it:
   ``server-certificate-rejected`` (TLS 1.2 shows the certificate: expired or not yet
   valid at capture time is said; TLS 1.3 hides it: inferred).
6. The client sent its flight and the server neither acknowledged it nor sent anything
   after it: ``client-certificate-rejected`` (TLS 1.3: inferred, and so is a server
   that stopped for another reason).
7. TLS done, no data channel: with a key log the messages inside say it
   (``auth-failed``, ``no-shared-cipher``, an alert); else ``stopped-after-tls``.
8. Whatever shows no failure and may go on past the capture's end, or started
   before it without a failure in view: ``incomplete``.

A session is *over* when the capture shows its end: a TCP FIN/RST, an ICMP error, a
last packet that was a retransmission nobody answered, ``QUIET`` seconds of capture
without a packet of it - or, decided by ``settle``, its client beginning a new session.
Short of that, a session that has not failed is ``incomplete``, never guessed.
"""

from ..dissect.tls import printable, server_choice
from ..protocol import CLIENT_RESETS
from .landmarks import CLIENT, MAX_TRACKED, SERVER, SIDES
from .settle import client_span
from .timeline import Timeline, flight_names as _names

QUIET = 5.0  # seconds of capture after a session's last packet that show it has stopped
ONE_WAY = 10.0  # seconds of data one way that show it one-way when the capture misses the session's start
_OTHER = {"client": "server", "server": "client"}
_ENDS = {"port-unreachable", "unreachable", "fin", "rst", "refused", "unanswered"}  # transport events that end a session


def judge(trace) -> dict:
    """The analysis of one finished session (the dict ``analyze --json`` prints)."""

    flow = trace.flow
    marks = trace.marks
    context = trace.context
    facts = TLSFacts(trace)
    if facts.version:
        marks.tls13 = facts.version == "TLS 1.3"
    inner = _inner(trace, context)
    unacknowledged = [len(marks.sent[side].keys() - marks.acked[side]) for side in (CLIENT, SERVER)]
    timeline = Timeline(trace, marks, facts, inner, unacknowledged)
    end = trace.reader.capture_end if trace.reader is not None else None
    verdict, stage, evidence, needs_end = _verdict(trace, marks, facts, inner)
    wrapping = flow.inference.decided.kind if flow.inference and flow.inference.decided else None
    data = trace.data or [None, None, 0, None, None, 0]
    analysis = {
        "client": flow.client[0], "client_port": flow.client[1],
        "server": flow.server[0], "server_port": flow.server[1], "transport": flow.transport,
        "session_id": None if trace.client_session_id is None else f"{trace.client_session_id:016x}",
        "remote_session_id": None if trace.server_session_id is None else f"{trace.server_session_id:016x}",
        "wrapping": wrapping,
        "start": trace.first, "end": trace.last, "frames": [trace.first_frame, trace.last_frame],
        "stage_reached": stage, "verdict": verdict, "evidence": evidence, "advice": None,  # (settle() fills it)
        "retransmissions": dict(zip(SIDES, marks.resent)),
        "unacknowledged": dict(zip(SIDES, unacknowledged)),
        "rtt": timeline.rtt,
        "renegotiations": len(marks.renegotiations),
        "packets": {"client": marks.packets[CLIENT] + data[2], "server": marks.packets[SERVER] + data[5]},
        "tls_version": facts.version,
        "timeline": timeline.entries,
    }
    if needs_end and not _over(trace, marks, end):
        # (settle() decides: the client's next session, if the capture has one, shows this one ended)
        analysis["open_end"] = None if end is None or trace.last is None else round(end - trace.last, 3)
    # (settle() tells one client's sessions from several clients' behind one address by what each client sent)
    analysis["client_span"] = client_span(trace, marks)
    _printable(analysis)
    return analysis


def _printable(analysis):
    """Evidence and timeline texts quote what peers sent (certificate names, messages read
    inside TLS): a control character there (a newline, a terminal escape) is shown escaped,
    never written to the user's terminal or splitting a line."""
    evidence = analysis["evidence"]
    for at, line in enumerate(evidence):
        if not line.isprintable():
            evidence[at] = printable(line)
    for entry in analysis["timeline"]:
        if not entry[3].isprintable():
            entry[3] = printable(entry[3])


def _over(trace, marks, end) -> bool:
    """Does the capture show this session's end (see the module docstring)?"""
    if marks.last_resent and (trace.data is None or not trace.data[2] or not trace.data[5]):
        return True  # (its last packet asked again for an answer that never came)
    if trace.events and any(kind in _ENDS for _f, _t, kind, _x, _s in trace.events):
        return True
    if end is None or trace.last is None:  # (a flow forgotten for being idle: long over)
        return True
    return end - trace.last >= QUIET


def _verdict(trace, marks, facts, inner):
    """(verdict, stage reached, evidence lines, whether the verdict holds only if the
    session is over: a side that stopped answering may just have been cut off by the
    capture's end)."""
    evidence = []
    data = trace.data
    started_inside = not marks.client_resets and (marks.first[CLIENT] is not None or marks.first[SERVER] is not None
                                                  or data is not None)
    if started_inside:
        evidence.append("the capture starts inside this session (no client reset in it)")
    # 1. the data channel
    if data is not None:
        client_data, server_data = data[2], data[5]
        if client_data and server_data:
            evidence.append(f"frame {data[0]}: first data packet from the client; frame {data[3]}: first from "
                            f"the server ({client_data} and {server_data} in all)")
            return "ok", "data", evidence, False
        side, frame, count = ("client", data[0], client_data) if client_data else ("server", data[3], server_data)
        evidence.append(f"frame {frame}: first of {count} data packets from the {side}; none from the "
                        f"{_OTHER[side]}")
        if _snapped(trace) == "gap":  # (the other side's data may be in what the capture missed)
            evidence.append(_cut_evidence("gap", "the other side's data may be in what it missed"))
            return "incomplete", "data", evidence, False
        if started_inside and trace.last - data[1 if client_data else 4] < ONE_WAY:
            # (the other side's data may lie before the capture, and keepalive pings are seconds apart)
            evidence.append(f"seen for less than {ONE_WAY:.0f} s from the middle of the session: too short to call "
                            "the data channel one-way")
            return "incomplete", "data", evidence, False
        return "data-one-way", "data", evidence, True
    events = trace.events or ()
    server_seen = marks.first[SERVER] is not None
    # 2. nothing from the server
    if not server_seen:
        return _unanswered(trace, marks, events, evidence)
    stage = "reset" if (marks.server_resets or marks.client_hello or marks.server_hello) else "none"
    if marks.server_hello is not None:
        stage = "tls"
    handshake_done = _handshake_done(marks)
    if handshake_done:
        stage = "auth"
    _transport_evidence(events, evidence)
    cut = _snapped(trace)
    if cut:  # (TLS read from cut packets is garbage: who stopped after what cannot be told)
        evidence.append(_cut_evidence(cut, "the handshake's TLS cannot be followed"))
        return "incomplete", stage, evidence, False
    # 3. alerts in clear
    alert = _first_alert(marks, facts)
    if alert is not None and not handshake_done:
        frame, sender, name = alert
        evidence.append(f"frame {frame}: TLS alert from the {sender}: {name}")
        if sender == "client" and marks.server_hello is not None:
            _certificate_evidence(facts, "server", trace, evidence)
            return "server-certificate-rejected", stage, evidence, False
        if sender == "server" and marks.client_flight:
            _certificate_evidence(facts, "client", trace, evidence)
            return "client-certificate-rejected", stage, evidence, False
        if sender == "server" and marks.server_hello is None:
            return "client-hello-rejected", stage, evidence, False
        return "tls-error", stage, evidence, False
    if inner:
        judged = _inner_verdict(inner, marks, evidence)
        if judged is not None:
            return judged
    unseen = _unseen(marks)
    if unseen is not None:  # (who stopped answering whom cannot be told from a capture that dropped packets)
        side, packet_id = unseen
        evidence.append(f"the capture missed the {side}'s packet-id {packet_id} (a later one, or its acknowledgement, "
                        "is in it): packets the capture dropped may hold the rest of the handshake")
        return "incomplete", stage, evidence, False
    # 4. the ClientHello unanswered
    if marks.client_hello is not None and marks.server_hello is None:
        evidence.append(f"frame {marks.client_hello}: the client's ClientHello; the server "
                        + ("acknowledged it" if _acked(marks, "client", marks.client_hello) else "never acknowledged it")
                        + " and sent no ServerHello")
        return "client-hello-rejected", stage, evidence, True
    if marks.server_hello is None:
        if not started_inside:
            evidence.append(f"frame {marks.server_resets[0] if marks.server_resets else marks.first[SERVER][0]}: "
                            "the server answered the reset; the client sent no ClientHello after it")
        return "incomplete", stage, evidence, False
    # 5. the client stopped after the server's flight
    if not marks.client_flight:
        first, last = marks.server_flight[0], marks.server_flight[-1]
        after = [frame for frame in marks.sent[CLIENT].values() if frame > first]
        if after:  # (TLS the reader could not follow - the capture starts inside the session - is no silence)
            evidence.append(f"{_span(first, last)}: the server's flight ({_names(marks.server_names)}); frame "
                            f"{min(after)}: the client answered it with a message that cannot be read as TLS")
            return "incomplete", stage, evidence, False
        acked = _acked(marks, "server", last)
        evidence.append(f"{_span(first, last)}: the server's flight ({_names(marks.server_names)}); the client "
                        + ("acknowledged it, then sent nothing more" if acked else "sent nothing after it"))
        if marks.tls13:
            evidence.append("TLS 1.3 hides the certificate: inferred from the client stopping after the server's "
                            "flight (confidence: medium; a client that fails for another reason looks the same)")
        _certificate_evidence(facts, "server", trace, evidence)
        return "server-certificate-rejected", stage, evidence, True
    # 6. the server stopped after the client's flight
    if not handshake_done:
        first, last = marks.client_flight[0], marks.client_flight[-1]
        acked = _acked(marks, "client", last)
        evidence.append(f"{_span(first, last)}: the client's flight ({_names(marks.client_names)}); the server "
                        + ("acknowledged it but answered nothing" if acked else "never acknowledged it")
                        + " and stopped")
        if marks.tls13:
            evidence.append("TLS 1.3 hides the certificates: inferred from the server stopping after the client's "
                            "flight, which carries the client's certificate (confidence: medium)")
        elif "Certificate" not in marks.client_names:
            evidence.append("the client sent no certificate: the server requires one")
        _certificate_evidence(facts, "client", trace, evidence)
        return "client-certificate-rejected", stage, evidence, True
    # 7. TLS done, no data channel
    _after_tls_evidence(marks, evidence)
    return "stopped-after-tls", stage, evidence, True


def _unanswered(trace, marks, events, evidence):
    """The server sent nothing in this session."""
    for frame, _time, kind, text, side in events:
        if side != "client":  # (an ICMP error for the server's packets says nothing of the server)
            continue
        if kind in ("port-unreachable", "refused"):
            evidence.append(f"frame {frame}: {text}")
            return "port-closed", "none", evidence, False
        if kind in ("unanswered", "unanswered-once") and not marks.first[CLIENT]:
            evidence.append(f"frame {frame}: {text}")
            return "no-connection", "none", evidence, kind == "unanswered-once"  # (resent SYNs: a proof)
    if marks.acked[SERVER]:  # (the client acknowledged what the server sent: the capture missed it)
        evidence.append(f"the client acknowledged the server's packet-id {min(marks.acked[SERVER])}, which the "
                        "capture never showed: the server answered, the capture dropped it")
        return "incomplete", "none", evidence, False
    resets = marks.client_resets
    if resets:
        evidence.append(f"frame {resets[0]}: the client's reset" + (f", sent {len(resets)} times (last in frame "
                                                                   f"{resets[-1]})" if len(resets) > 1 else "")
                        + "; the server never answered")
    elif marks.first[CLIENT] is not None:
        evidence.append(f"frame {marks.first[CLIENT][0]}: the client's packets; the server never answered")
    _transport_evidence(events, evidence)
    cut = _snapped(trace)
    if cut:  # (a cut packet fails every HMAC; over TCP the server's packets cut may be unreadable, not absent)
        evidence.append(_cut_evidence(cut, "the key trials need whole packets" + (
            ", and the server's packets may be cut, not missing" if trace.flow.transport == "tcp" else "")))
        if trace.flow.transport == "tcp":
            return "incomplete", "none", evidence, False
    trial = None if cut else _key_trial(trace)
    if trial is not None:
        evidence.append(trial.evidence)
        if trial.verdict is not None:
            return trial.verdict, "none", evidence, False
    for _frame, _time, kind, _text, side in events:
        if kind == "fin" and side == "server":
            return "connection-closed", "none", evidence, False
        if kind == "rst" and side == "server":
            return "connection-reset", "none", evidence, False
    if not resets:  # (the capture starts inside the session: the server may have answered before it)
        return "incomplete", "none", evidence, False
    return "server-silent", "none", evidence, True


def _unseen(marks):
    """(side, packet-id) of a handshake packet the capture never showed though it shows a
    later one of that side, or the other side acknowledging it - or None. (Ids before the
    first one seen are before the capture began, not missed.)"""
    for side, name in enumerate(SIDES):
        sent = marks.sent[side]
        if len(sent) >= MAX_TRACKED:
            continue
        missing = marks.acked[side] - sent.keys()
        ids = sorted(sent)
        for before, after in zip(ids, ids[1:]):
            if after != before + 1:  # (never a range of ids: a damaged packet's may be 2**32 - 1)
                missing.add(before + 1)
                break
        if missing:
            return name, min(missing)
    return None


def _snapped(trace):
    """"cut" when the capture's snap length cut packets of this session's flow, "gap" when
    it missed bytes of its TCP connection (a capture started inside it, or dropped
    packets), else None: what those packets carried cannot be read whole."""
    return getattr(trace.flow, "damaged", None)


def _cut_evidence(cut, what) -> str:
    if cut == "cut":
        return f"the capture's snap length cut packets of this flow short: {what} (capture whole packets: tcpdump -s 0)"
    return f"the capture missed bytes of this TCP connection: {what}"


def _key_trial(trace):
    """The key trials on the client's unanswered packets (None without the server's key, or
    when the first is no reset: a capture that starts inside the session shows packets a
    static key may not open - tls-crypt-v2's after the reset, 2.6's dynamic tls-crypt of a
    renegotiation)."""
    context = trace.context
    if context.keys is None or context.keys.empty or not trace.trial or trace.trial[0][0] >> 3 not in CLIENT_RESETS:
        return None
    from .keytrials import ServerKeys, trial

    server = ServerKeys.from_options(context.keys, context.digest, context.server_direction)
    return trial(trace.trial[0], trace.flow.transport, server)


def _transport_evidence(events, evidence):
    for frame, _time, _kind, text, _side in events:
        line = f"frame {frame}: {text}"
        if line not in evidence:
            evidence.append(line)


def _handshake_done(marks) -> bool:
    """TLS 1.2: the server's Finished after the client's flight; TLS 1.3: the server
    acknowledged the client's flight or sent TLS after it."""
    if not marks.client_flight:
        return False
    if marks.server_after is not None:
        return True
    return bool(marks.tls13) and _acked(marks, "client", marks.client_flight[-1])


def _acked(marks, sender, frame) -> bool:
    """Did the other side acknowledge the packet ``sender`` sent in ``frame``?"""
    side = CLIENT if sender == "client" else SERVER
    for key, first in marks.sent[side].items():
        if first == frame:
            return key in marks.acked[side]
    return False


def _span(first, last) -> str:
    return f"frame {first}" if first == last else f"frames {first}-{last}"


def _first_alert(marks, facts):
    if marks.alerts:
        frame, sender, name = marks.alerts[0]
        return frame, sender, facts.alert(frame) or name
    return None


class TLSFacts:
    """What the key-0 TLS in clear says, read only when asked: the ServerHello's choice
    (``version``, ``cipher_suite``: every session), certificates by sender and alerts
    (only where a verdict needs them)."""

    def __init__(self, trace):
        self.streams = [(sender, stream) for (sender, key_id, session_id), stream in trace.flow.tls.items()
                        if stream and key_id == 0 and session_id in (trace.client_session_id, trace.server_session_id)]
        self.version = self.cipher_suite = None
        for sender, stream in self.streams:
            if sender == "server":
                choice = server_choice(stream)
                if choice is not None:
                    self.version, self.cipher_suite = choice

    def certificates(self, sender):
        """(frame, certificate dicts, leaf first) ``sender`` showed in clear, or None."""
        for side, stream in self.streams:
            if side == sender:
                for detail in stream.facts():
                    if detail.get("certificates"):
                        return detail["frame"], detail["certificates"]
        return None

    def alert(self, frame):
        """"fatal unknown ca" for the alert completed in ``frame``, or None."""
        for _side, stream in self.streams:
            for detail in stream.facts():
                if detail["frame"] == frame and "description" in detail and "level" in detail:
                    return f"{detail['level'].lower()} {detail['description']}"
        return None


def _certificate_evidence(facts, sender, trace, evidence):
    """Judge ``sender``'s certificate (in clear: TLS 1.2) at the session's time."""
    shown = facts.certificates(sender)
    if not shown:
        return
    frame, chain = shown
    if not chain or "subject" not in chain[0]:
        return
    leaf = chain[0]
    at = trace.first
    from .certcheck import judge_certificate

    for line in judge_certificate(leaf, at, facts.certificates(_OTHER[sender])):
        evidence.append(f"frame {frame}: {line}")


def _inner(trace, context):
    """What the key log opens inside TLS (``inner.InnerEvent``s), or ()."""
    if context.keylog is None or not trace.chunks:
        return ()
    from .inner import inner_events

    streams = trace.tls_streams()
    try:
        return inner_events(streams.get("client", []), streams.get("server", []), context.keylog)
    except Exception:  # (a decryption bug must not cost the session's other findings)
        return ()


def _inner_verdict(inner, marks, evidence):
    """_verdict's answer from the messages inside TLS, or None when they say nothing."""
    for event in inner:
        if event.kind == "alert" and event.text.startswith("fatal"):
            evidence.append(f"frame {event.frame}: TLS alert from the {event.sender} (decrypted): {event.text}")
            if event.sender == "client":
                return "server-certificate-rejected", "tls", evidence, False
            return ("client-certificate-rejected" if marks.client_flight else "client-hello-rejected"), "tls", \
                evidence, False
    for event in inner:
        if event.kind == "control" and event.text.startswith("AUTH_FAILED"):
            evidence.append(f"frame {event.frame}: the server says (decrypted): {event.text}")
            if "cipher" in event.text.lower():
                return "no-shared-cipher", "push", evidence, False
            return "auth-failed", "push", evidence, False
    for event in inner:
        if event.kind == "control" and event.text.startswith("PUSH_REPLY"):
            evidence.append(f"frame {event.frame}: PUSH_REPLY from the server (decrypted), but no data packet "
                            "followed")
            return "stopped-after-tls", "push", evidence, True
    return None


def _after_tls_evidence(marks, evidence):
    done = marks.server_after or (marks.client_flight[-1] if marks.client_flight else None)
    evidence.append(f"frame {done}: TLS handshake complete; then {len(marks.client_app)} TLS packets from the "
                    f"client and {len(marks.server_app)} from the server (encrypted: key-method 2, PUSH_REQUEST/"
                    "PUSH_REPLY or AUTH_FAILED), and no data packet")
    unacked = sorted(frame for key, frame in marks.sent[SERVER].items() if key not in marks.acked[SERVER])
    if unacked:
        evidence.append(f"frame {unacked[-1]}: the server's last message was never acknowledged: the client "
                        "had stopped")
