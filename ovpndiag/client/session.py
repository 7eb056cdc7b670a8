"""The Client: one OpenVPN session driven stage by stage, always ended cleanly.

    reset  the hard resets (any wrapping; tls-crypt-v2 early negotiation, WKc resent)
    tls    TLS over the reliable control channel; done when our last flight is ACKed
    auth   key-method 2 both ways (our key source, options, credentials, peer-info)
    push   PUSH_REQUEST -> PUSH_REPLY, or AUTH_FAILED / AUTH_PENDING / RESTART / HALT
    data   ovpndiag.client.datachannel.run_data_stage(client)

Each stage method returns a ``Stage``; ``run`` chains them and fills a
``HandshakeResult`` with a verdict from ovpndiag.verdicts. Silence is judged by
what was last sent: no answer to our ClientHello means the server refused it - or
is full: a second session whose ClientHello offers every TLS version and suite
tells the two apart (answered: our TLS settings; dropped too: max-clients). No ACK
of our certificate flight means it refused our certificate - unless the server is
not answering anybody any more (a fresh reset goes unanswered too): then it
stopped. Over TCP a full server closes the connection before reading anything:
an idle second connection closed at once says so.

Packets go through ``reliable.ControlChannel`` (the Scapy layers and the
session's wrapper) over ovpndiag.transport's sockets; ``exchange`` keeps every
packet sent and received for ``--write``, as the probe's does.
"""

import os
import socket
import time
from typing import List, Optional

from .. import transport
from ..protocol import DATA_OPCODES
from . import STAGES, HandshakeResult, HandshakeSettings, Stage
from .keymethod import KeyExchange, KeyMethodError, client_message, iv_proto_names, options_string, \
    parse_server_message, peer_info, server_randoms
from .push import EXIT, PUSH_REQUEST, MessageReader, PushReply, classify, parse_options
from .reliable import MAX_PAYLOAD, P_CONTROL_HARD_RESET_SERVER_V2, ControlChannel, ProtocolError, early_negotiation_flags
from .tlslayer import CERTIFICATE_ALERTS, HELLO_ALERTS, TLSClient, TLSFailure, exporter_available

EXPORTER_LABEL = "EXPORTER-OpenVPN-datakeys"
PUSH_RETRY = 3.0  # PUSH_REQUEST again when unanswered this long (the server may be slow to authenticate)
LIVENESS_RESERVE = 1.0  # seconds kept at the end of the budget to ask whether the server still answers
CLOSE_BUDGET = 1.0  # seconds close() may take to get EXIT acknowledged, beyond the stages' budget
IDLE_WAIT = 0.3  # TCP: an idle connection the server keeps this long was not refused for being one too many
WIDEST_OFFER = "TLS 1.0-1.3 and every cipher suite"  # what the second session's ClientHello offers


class _StageFailed(Exception):
    def __init__(self, verdict, message, facts=None, advice=()):
        super().__init__(message)
        self.verdict, self.message, self.facts, self.advice = verdict, message, facts or {}, list(advice)


class Client:
    def __init__(self, settings: HandshakeSettings):
        self.settings = settings
        probe = settings.probe
        self.proto, self.wrapper = probe.proto, probe.wrapper
        # Credentials are read now: a bad CA/cert/key is a CredentialsError before anything is sent.
        self.tls_client = TLSClient(ca=settings.ca, cert=settings.cert, key=settings.key,
                                    key_password=settings.key_password, remote_cert_tls=settings.remote_cert_tls,
                                    verify_x509_name=settings.verify_x509_name, keylog=settings.keylog,
                                    tls_version_max=settings.tls_version_max)
        self.result = HandshakeResult(probe.host, probe.port, probe.proto, wrapping=probe.wrapping_name)
        self.key_exchange = KeyExchange()
        self.key_export = exporter_available()
        self.link = None
        self.channel: Optional[ControlChannel] = None
        self.started: Optional[float] = None  # monotonic time of the first packet sent
        self.deadline: Optional[float] = None
        self.server_key_message = None
        self.push_reply: Optional[dict] = None
        self.control_messages: List[str] = []
        self.outcome = None  # push.PushOutcome once the server said something final
        self.exchange: list = []  # (time, local, remote, proto, bytes, sent), as the probe's
        self.data_result: Optional[dict] = None
        self._data_queue: List[bytes] = []
        self._reader = MessageReader()
        self._push_parts = PushReply()
        self._done: List[str] = []
        self._closed = False
        self._tls_bytes_in = 0
        self._hello_sent_packets = 0  # control packets our ClientHello took
        self._client_flight_sent = False
        self._km_sent = False
        self._target = None  # run()'s last stage: what may be sent ahead (see _tls_step)
        self._push_requested = False
        self._after_flush = None

    # --- what datachannel.py uses ---------------------------------------------------------

    @property
    def session_id(self) -> Optional[bytes]:
        return self.channel.session_id.to_bytes(8, "big") if self.channel else None

    @property
    def remote_session_id(self) -> Optional[bytes]:
        if self.channel is None or self.channel.remote_session_id is None:
            return None
        return self.channel.remote_session_id.to_bytes(8, "big")

    @property
    def key_derivation(self) -> str:
        reply = self.push_reply or {}
        # 2.6 servers say "protocol-flags ... tls-ekm" (or "key-derivation tls-ekm" to clients
        # that do not announce cc-exit)
        announced = "tls-ekm" in (reply.get("protocol_flags") or []) or reply.get("key_derivation") == "tls-ekm"
        return "tls-ekm" if self.key_export and announced else "prf"

    def elapsed(self) -> float:
        return time.monotonic() - self.started if self.started else 0.0

    def transport_send(self, packet: bytes):
        if self.link is None:
            raise transport.Closed("the session is closed")
        self._send_wire(packet)

    def transport_recv(self, timeout: float) -> Optional[bytes]:
        """The next data-channel packet, or None after ``timeout`` seconds; control
        packets that come meanwhile are ACKed and their messages kept."""
        if self.link is None:
            raise transport.Closed("the session is closed")
        until = time.monotonic() + max(0.0, timeout)
        while not self._data_queue:
            self._flush()
            now = time.monotonic()
            if now >= until:
                return None
            due = self.channel.next_due()  # a delayed ACK, a retransmission
            self._quickack()
            try:
                wire = self.link.receive(until if due is None else max(min(until, due), now + 1e-4))
            except transport.Timeout:
                continue
            try:
                self._handle(wire)
            except _StageFailed as failure:  # e.g. a TLS alert: to the data stage, the link is lost
                raise transport.TransportError(failure.message) from None
        return self._data_queue.pop(0)

    def tls_export(self, label: str, length: int) -> Optional[bytes]:
        return self.tls_client.export(label, length) if self.key_export else None

    # --- the stages ------------------------------------------------------------------------

    def run(self, stage: Optional[str] = None) -> HandshakeResult:
        """Every stage up to ``stage`` (by default the settings', "data"), stopping at the
        first failure; always closes."""
        stage = stage or self.settings.stage or "data"
        if stage not in STAGES:
            raise ValueError(f"unknown stage '{stage}' (one of {', '.join(STAGES)})")
        self._target = stage
        try:
            for name in STAGES[:STAGES.index(stage) + 1]:
                if not getattr(self, name)().ok:
                    break
        finally:
            self.close()
        return self.result

    def reset(self) -> Stage:
        return self._stage("reset", self._reset)

    def tls(self) -> Stage:
        return self._stage("tls", self._tls)

    def auth(self) -> Stage:
        return self._stage("auth", self._auth)

    def push(self) -> Stage:
        return self._stage("push", self._push)

    def data(self) -> Stage:
        if not self._ready_for("data"):
            return self.result.stages[-1]
        try:
            from .datachannel import run_data_stage
        except ImportError:
            run_data_stage = None
        if run_data_stage is None:
            stage = Stage("data", False, self.elapsed(), "the data stage is not implemented yet", {})
            self.result.stages.append(stage)
            self._verdict("data-one-way", "the data stage is not implemented yet")
            return stage
        stage = run_data_stage(self)
        if stage not in self.result.stages:
            self.result.stages.append(stage)
        self.result.elapsed = stage.elapsed
        if self.data_result is not None:
            self.result.data = self.data_result
        if stage.ok:
            self._done.append("data")
            self._verdict("ok", stage.detail)
        elif self.result.verdict == "ok":
            self._verdict(stage.facts.get("verdict", "data-one-way"), stage.detail)
        return stage

    def _ready_for(self, name) -> bool:
        """Run the stages before ``name`` that have not run; False if one failed."""
        for earlier in STAGES[:STAGES.index(name)]:
            if earlier in self._done:
                continue
            if any(s.name == earlier and not s.ok for s in self.result.stages):
                return False
            if not getattr(self, earlier)().ok:
                return False
        return not any(not s.ok for s in self.result.stages)

    def _stage(self, name, work) -> Stage:
        done = next((s for s in self.result.stages if s.name == name), None)
        if done is not None:
            return done
        if not self._ready_for(name):
            return self.result.stages[-1]
        if self.deadline is None:
            self.deadline = time.monotonic() + self.settings.probe.timeout
        try:
            detail, facts = work()
            stage = Stage(name, True, self.elapsed(), detail, facts)
            self._done.append(name)
            self._verdict("ok", detail)
        except _StageFailed as failure:
            stage = Stage(name, False, self.elapsed(), failure.message, {**failure.facts, "verdict": failure.verdict})
            self._verdict(failure.verdict, failure.message, failure.advice)
        except transport.TransportError as error:
            verdict = _transport_verdict(error, self.proto, name)
            stage = Stage(name, False, self.elapsed(), str(error), {"verdict": verdict})
            self._verdict(verdict, f"{self._where()}: {error}")
        self.result.stages.append(stage)
        self.result.elapsed = stage.elapsed
        return stage

    def _verdict(self, verdict, message, advice=()):
        from .. import verdicts

        self.result.verdict, self.result.message = verdict, message
        known = verdicts.VERDICTS.get(verdict)
        self.result.advice = list(advice) + (list(known.advice) if known and verdict != "ok" else [])

    def _where(self):
        return f"{self.result.address or self.result.host}/{self.proto}"

    # reset -----------------------------------------------------------------------------------

    def _reset(self):
        probe = self.settings.probe
        try:
            addresses = transport.resolve_within(probe.host, probe.port, probe.proto, probe.family,
                                                 self.deadline - time.monotonic())
        except (OSError, UnicodeError, transport.Timeout) as error:
            raise _StageFailed("unresolvable", f"cannot resolve {probe.host}: "
                                               f"{getattr(error, 'strerror', None) or error}") from None
        if not addresses:
            raise _StageFailed("unresolvable", f"{probe.host} has no address")
        failure = None
        for index, address in enumerate(addresses):
            share = (self.deadline - time.monotonic()) / (len(addresses) - index)
            try:
                return self._reset_address(address, min(self.deadline, time.monotonic() + share))
            except (_StageFailed, transport.TransportError) as error:
                failure = error
                verdict = error.verdict if isinstance(error, _StageFailed) else \
                    _transport_verdict(error, self.proto, "reset")
                if verdict not in ("server-silent", "port-closed", "no-connection", "unreachable") \
                        or time.monotonic() >= self.deadline:
                    break
                self._close_link()
        raise failure

    def _reset_address(self, address, until):
        self.result.address = str(address)
        self._address = address
        if self.proto == "udp":
            self.link = transport.UDPTransport(address)
        else:
            self.link = transport.TCPTransport(address, until)
            # OpenVPN's small control packets would otherwise wait on Nagle and delayed ACKs.
            self.link.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.family = 6 if address.family == socket.AF_INET6 else 4
        self._local, self._remote = self.link.local, (address.ip, address.port)  # for exchange, asked once
        self.channel = ControlChannel(self.wrapper, _new_session_id(), self.proto)
        self.channel.reset()
        if self.started is None:
            self.started = time.monotonic()
        self._server_reset = None
        self._flush()  # the reset goes out; then, while the server answers, the ClientHello is made
        self.tls_client.handshake()  # (it stays in the memory BIO until the tls stage takes it)
        try:
            answered = self._pump(lambda: self._server_reset is not None, until)
        except (transport.Closed, transport.Reset) as error:
            self._judge_closed_connection(address, error)
            raise
        if not answered:
            sends = self.channel.packets_sent
            raise _StageFailed("server-silent", f"no reply from {address}/{self.proto} to {sends} reset"
                               f"{'s' if sends != 1 else ''} in {self.elapsed():.1f} s",
                               {"resets_sent": sends})
        reply = self._server_reset
        facts = {"session_id": f"{self.channel.session_id:016x}",
                 "remote_session_id": f"{reply.session_id:016x}", "rtt": self.channel.srtt,
                 "resets_sent": self.channel.packets_sent, "wrapping": self.result.wrapping}
        if self.channel.resend_wkc:
            facts["early_negotiation"] = "RESEND_WKC"
        rtt = f" in {self.channel.srtt * 1000:.1f} ms" if self.channel.srtt is not None else ""
        return f"{address}/{self.proto} answered{rtt} ({self.result.wrapping})", facts

    def _judge_closed_connection(self, address, error):
        """TCP: the server dropped the connection before answering our reset. A full 2.6
        server accepts and closes every new connection before reading from it; one with
        room keeps an idle connection open (waiting for a reset), and closes ours only
        in answer to what we sent (e.g. another tls-auth key). Raises max-clients, or
        returns (the caller keeps connection-closed/-reset)."""
        if self.proto != "tcp":
            return
        closed_after = self._idle_connection_closed(address)
        if closed_after is None:
            return
        raise _StageFailed("max-clients", f"{address}/tcp closed the connection without answering our reset, and "
                                          f"closes a new idle connection at once too ({closed_after * 1000:.1f} ms "
                                          f"after accepting it, without being sent anything): the server is full "
                                          f"(max-clients reached), or a connection limit in front of OpenVPN "
                                          f"refuses new connections",
                           {"closed": str(error), "idle_connection_closed_after": closed_after})

    def _idle_connection_closed(self, address) -> Optional[float]:
        """Seconds after which the server closed a new connection we sent nothing on,
        or None when it kept it open IDLE_WAIT (or several round trips) or time is short."""
        if self.deadline - time.monotonic() <= 0.05:
            return None
        begun = time.monotonic()
        try:
            link = transport.TCPTransport(address, self.deadline)
        except transport.TransportError:
            return None
        accepted = time.monotonic()
        wait = min(max(IDLE_WAIT, 4 * (accepted - begun)), self.deadline - accepted)
        try:
            link.receive(accepted + wait)
        except (transport.Closed, transport.Reset):
            return time.monotonic() - accepted
        except transport.TransportError:
            return None  # still open (Timeout), or it said something first: not a silent refusal
        finally:
            link.close()
        return None

    # tls ---------------------------------------------------------------------------------------

    def _tls(self):
        tls = self.tls_client
        self._tls_step()  # the ClientHello
        try:
            ok = self._pump(lambda: tls.handshake_done and self.channel.idle, self._silence_deadline())
        except (transport.Closed, transport.Reset) as error:  # TCP: the server dropped the session
            self._judge_tls_silence(closed=str(error))
        if not ok:
            self._judge_tls_silence()
        facts = tls.tls_facts()
        certificate = tls.server_certificate()
        self.result.tls = facts
        self.result.server_certificate = certificate
        facts = {**facts, "server_certificate": certificate, "alerts": tls.alerts,
                 "retransmissions": self.channel.retransmissions}
        who = f"server cert {certificate['subject']}" if certificate else "no server certificate"
        trust = "verified" if certificate and certificate["verified"] else "NOT verified (no --ca)" \
            if not tls.ca_given else "not verified"
        return f"{facts['version']} {facts['cipher']}, {who}, {trust}", facts

    def _tls_step(self):
        """Advance TLS with what arrived; queue what it has to send."""
        tls = self.tls_client
        try:
            if not tls.handshake_done:
                tls.handshake()
                if tls.handshake_done:
                    if self._wants("auth"):
                        # As OpenVPN does: key-method 2 right behind our Finished, not a round
                        # trip later (the tls stage still ends only when the server ACKs our flight).
                        self._send_key_method()
                    self._after_flush = tls.server_certificate  # while the server reads our flight
            if tls.handshake_done:
                for record in tls.records():
                    self._on_record(record)
        except TLSFailure as failure:
            self._queue_tls_output()  # our alert, so the server's log says why
            self._flush()
            raise self._tls_failure(failure) from None
        self._queue_tls_output()

    def _queue_tls_output(self):
        data = self.tls_client.outgoing()
        if data:
            if not self._hello_sent_packets:  # the last message packet-id our ClientHello takes
                self._hello_sent_packets = self.channel.next_packet_id + (len(data) - 1) // MAX_PAYLOAD
            else:  # our certificate flight (TLS 1.3: with Finished; TLS 1.2: before the server's)
                self._client_flight_sent = True
            self.channel.send_bytes(data)

    def _tls_failure(self, failure: TLSFailure) -> _StageFailed:
        facts = {"alerts": failure.alerts, "server_certificate": self.tls_client.server_certificate()}
        self.result.server_certificate = facts["server_certificate"]
        received = [a["description"] for a in failure.alerts if a["direction"] == "received"]
        sent = [a["description"] for a in failure.alerts if a["direction"] == "sent"]
        if failure.kind == "server-certificate-rejected":
            told = f" (we sent the server TLS alert {sent[-1]})" if sent else ""
            return _StageFailed("server-certificate-rejected", failure.args[0] + told, facts)
        if received and received[-1] in CERTIFICATE_ALERTS and self.tls_client.connection.get_peer_certificate():
            return _StageFailed("client-certificate-rejected",
                                f"the server refused our certificate: TLS alert {received[-1]}", facts)
        if received and received[-1] in HELLO_ALERTS and not self._tls_bytes_in_after_hello():
            return _StageFailed("client-hello-rejected", f"the server refused our ClientHello: TLS alert "
                                                         f"{received[-1]}", facts)
        return _StageFailed("tls-error", failure.args[0], facts)

    def _tls_bytes_in_after_hello(self):
        return self.tls_client.connection.get_peer_certificate() is not None

    def _silence_deadline(self):
        """Keep time at the end to ask whether the server still answers anybody."""
        budget = self.deadline - time.monotonic()
        return self.deadline - min(LIVENESS_RESERVE, budget / 4)

    def _judge_tls_silence(self, closed=None):
        tls, channel = self.tls_client, self.channel
        stalled = min(channel.unacked) if channel.unacked else None
        facts = {"unacknowledged": sorted(channel.unacked), "retransmissions": channel.retransmissions,
                 "server_tls_bytes": self._tls_bytes_in, "alerts": tls.alerts}
        if not self._tls_bytes_in:
            what, verdict = "our ClientHello", "client-hello-rejected"
            detail = "no TLS answer" + (" and no ACK" if stalled is not None and stalled <= self._hello_sent_packets
                                         else "")
        elif self._client_flight_sent:
            what, verdict = "our certificate" if self.settings.cert else "our (empty) certificate flight", \
                "client-certificate-rejected"
            detail = "never ACKed" if stalled is not None else "no answer"
        else:
            what, verdict, detail = "part of the server's TLS flight", "server-stopped", "the rest never came"
        facts["server_certificate"] = tls.server_certificate()
        self.result.server_certificate = facts["server_certificate"]
        if closed:
            detail, facts["closed"] = "the server closed the connection", closed
        if verdict == "client-hello-rejected":
            self._judge_hello_silence(detail, facts)
        if verdict != "server-stopped" and not closed and not self._server_alive():
            verdict = "server-stopped"
            raise _StageFailed(verdict, f"the server stopped answering after {what} ({detail}), and a new reset "
                                        f"is not answered either", facts)
        if verdict == "client-certificate-rejected":
            message = f"the server went silent after {what} ({detail}): it refused our certificate " \
                      f"(untrusted, revoked or expired{', or none given' if not self.settings.cert else ''})"
        else:
            message = f"the server stopped answering half-way through TLS ({what}: {detail})"
        raise _StageFailed(verdict, message, facts)

    def _judge_hello_silence(self, detail, facts):
        """No TLS answer to our ClientHello: a refused ClientHello, or a full server (which
        answers resets statelessly and drops the session's next packet). Ask with a
        second session offering everything: answered -> it was our TLS settings; dropped
        too -> (UDP) max-clients. Always raises."""
        head = f"the server went silent after our ClientHello ({detail})"
        if self.deadline - time.monotonic() <= 0.05:  # no time to ask
            raise _StageFailed("client-hello-rejected", f"{head}: no common TLS version or cipher suite, or "
                                                        f"max-clients reached", facts)
        widest = facts["widest_hello"] = self._widest_hello()
        if widest.get("verdict") == "max-clients":  # TCP: its connection was refused as one too many
            raise _StageFailed("max-clients", f"{head}; then {widest['message']}", facts)
        if not widest["reset_answered"]:
            raise _StageFailed("server-stopped", f"the server stopped answering after our ClientHello ({detail}), "
                                                 f"and a new reset is not answered either", facts)
        offer = f"a second session's ClientHello offering {WIDEST_OFFER}"
        if widest["answered"]:
            chose = " ".join(str(widest[k]) for k in ("version", "cipher") if widest.get(k)) or "TLS"
            ours = self.settings.tls_version_max
            above = f"; it chose a version above our maximum, TLS {ours}" if ours and widest.get("version") \
                and widest["version"].replace("TLSv", "") > ours else ""
            raise _StageFailed("client-hello-rejected", f"{head}, but answered {offer} ({chose}): proven, no common "
                                                        f"TLS version or cipher suite with ours{above}", facts)
        if self.proto == "udp":
            raise _StageFailed("max-clients", f"{head}, and dropped {offer} too, though it answered that "
                                              f"session's reset: it takes no new client (max-clients reached, or "
                                              f"its connect-freq limit of new sessions)", facts)
        raise _StageFailed("client-hello-rejected", f"{head}, and did not answer {offer} either: it refuses "
                                                    f"every TLS offer we can make", facts)

    def _widest_hello(self) -> dict:
        """A second session to the same address (new socket, new session id, same
        wrapping) whose ClientHello offers everything (tlslayer's permissive client).
        It refuses the server's certificate as soon as the server's flight comes, so
        our TLS alert ends it at once on the server (no session left to time out).
        Its packets join ``exchange``."""
        from dataclasses import replace

        sibling = Client(replace(self.settings, ca=None, cert=None, key=None, key_password=None, keylog=None,
                                 remote_cert_tls=None, verify_x509_name=None, tls_version_max=None, write=None,
                                 stage="tls"))
        sibling.tls_client = TLSClient(permissive=True)
        sibling.deadline = self.deadline
        facts = {"reset_answered": False, "answered": False}
        try:
            sibling._reset_address(self._address, self.deadline)
            facts["reset_answered"] = True
            sibling._tls_step()
            if sibling._pump(lambda: sibling._tls_bytes_in > 0, self.deadline):
                # the rest of its flight, then our alert (raised as a failed stage)
                grace = 0.2 + 4 * (sibling.channel.srtt or 0.0)
                sibling._pump(lambda: False, min(self.deadline, time.monotonic() + grace))
        except _StageFailed as failure:
            if not facts["reset_answered"]:
                facts.update(verdict=failure.verdict, message=failure.message)
        except (transport.TransportError, TLSFailure) as error:
            facts.setdefault("error", str(error))
        finally:
            sibling._close_link()  # (no ACKs: its session is over on the server)
            self.exchange += sibling.exchange
        if sibling._tls_bytes_in:
            tls = sibling.tls_client
            facts.update(answered=True, server_tls_bytes=sibling._tls_bytes_in, alerts=tls.alerts, **tls.tls_facts())
        facts["session_id"] = f"{sibling.channel.session_id:016x}" if sibling.channel else None
        return facts

    def _server_alive(self) -> bool:
        """Does the server answer a fresh reset (from a new socket)? Tells a refusal
        (our session dropped) from a server that stopped answering at all."""
        from ..probe import OK, probe
        from ..settings import ProbeSettings

        left = self.deadline - time.monotonic()
        if left <= 0.05:
            return True  # no time to ask: assume the usual, a refusal
        host = self.result.address.rsplit(":", 1)[0].strip("[]")
        settings = ProbeSettings(host=host, port=self.settings.probe.port, proto=self.proto, timeout=left,
                                 retries=1, retry_interval=left / 2, wrapper=self.wrapper)
        return probe(settings).verdict == OK

    # auth --------------------------------------------------------------------------------------

    def _wants(self, stage) -> bool:
        """Whether run() is going on to ``stage``: then its first message may go out early."""
        return self._target is not None and STAGES.index(self._target) >= STAGES.index(stage)

    def _send_key_method(self):
        if self._km_sent:
            return
        settings = self.settings
        user, password = settings.auth_user_pass or (None, None)
        self._peer_info = peer_info(settings.data_ciphers, self.proto, self.key_export, _gui_version())
        message = client_message(self.key_exchange, options_string(self.proto, self.family,
                                                                   self.wrapper.wrapping.kind == "tls-auth"),
                                 user, password, self._peer_info)
        self.tls_client.send(message)
        self._km_sent = True
        self._queue_tls_output()

    def _send_push_request(self):
        self._push_requested = True
        self._send_text(PUSH_REQUEST)

    def _auth(self):
        user = (self.settings.auth_user_pass or (None, None))[0]
        self._send_key_method()
        info = self._peer_info
        if not self._pump(lambda: self.server_key_message is not None or self.outcome is not None,
                          self._silence_deadline()):
            if not self._server_alive():
                raise _StageFailed("server-stopped", "the server stopped answering after our key-method 2 message")
            raise _StageFailed("stopped-after-tls", "TLS completed, but the server never sent its key-method 2 "
                                                    "message")
        if self.server_key_message is None:
            self._raise_outcome()
        server = self.server_key_message
        facts = {"peer_info_sent": {k: v for k, v in info.items()},
                 "iv_proto": iv_proto_names(int(info["IV_PROTO"])), "server_options": server.options,
                 "server_peer_info": server.peer_info, "username": user}
        return f"key-method 2 exchanged{' (user ' + user + ')' if user else ''}; server options " \
               f"'{server.options[:60]}'", facts

    # push --------------------------------------------------------------------------------------

    def _push(self):
        if self.outcome is None and not self._push_requested:
            self._send_push_request()
        silence = self._silence_deadline()
        while self.outcome is None and time.monotonic() < silence:
            self._pump(lambda: self.outcome is not None, min(silence, time.monotonic() + PUSH_RETRY))
            if self.outcome is None:
                self._send_push_request()
        if self.outcome is None:
            # A server that does not even ACK our PUSH_REQUEST may have stopped: ask it with a new reset.
            if self.channel.unacked and not self._server_alive():
                raise _StageFailed("server-stopped", "the server stopped answering after our PUSH_REQUEST "
                                                     "(a new reset is not answered either)")
            raise _StageFailed("push-timeout", f"no PUSH_REPLY to PUSH_REQUEST within {self.elapsed():.1f} s")
        if self.outcome.kind == "auth-pending":
            # the URL or prompt for the user follows in INFO_PRE: wait a moment for it
            self._pump(lambda: any(m.startswith("INFO_PRE,") for m in self.control_messages),
                       min(self.deadline, time.monotonic() + 0.3))
        if self.outcome.kind != "push-reply":
            self._raise_outcome()
        reply = self.push_reply
        parts = []
        if reply.get("ifconfig"):
            parts.append("ifconfig " + "/".join(reply["ifconfig"]))
        for name in ("route_gateway", "peer_id", "cipher"):
            if reply.get(name) is not None:
                parts.append(f"{name.replace('_', '-')} {reply[name]}")
        if reply.get("protocol_flags"):
            parts.append("protocol-flags " + " ".join(reply["protocol_flags"]))
        return "PUSH_REPLY: " + ", ".join(parts), {"push_reply": reply}

    def _raise_outcome(self):
        outcome = self.outcome
        text = outcome.text
        if outcome.kind == "auth-failed":
            if "cipher negotiation failed" in text:
                raise _StageFailed("no-shared-cipher", f"AUTH_FAILED: {text}", {"reason": text})
            raise _StageFailed("auth-failed", f"authentication failed (AUTH_FAILED{': ' + text if text else ''})",
                               {"reason": text})
        if outcome.kind == "auth-pending":
            info = next((m.split(",", 1)[1] for m in self.control_messages if m.startswith("INFO_PRE,")), None)
            raise _StageFailed("auth-pending", f"the server waits for an extra authentication (AUTH_PENDING"
                                               f"{', ' + text if text else ''}{': ' + info if info else ''})",
                               {"reason": text, "info": info})
        if outcome.kind == "restart":
            raise _StageFailed("server-restart", f"the server said RESTART{': ' + text if text else ''}",
                               {"reason": text})
        raise _StageFailed("server-halted", f"the server said {outcome.kind.upper()}{': ' + text if text else ''}",
                           {"reason": text})

    # close -----------------------------------------------------------------------------------

    def close(self):
        """End the session the way the server expects, then close the socket.
        Never raises; safe to call twice.

        After the key-method exchange: EXIT through the control channel when the server
        offered cc-exit (or has not pushed yet: we announced CC_EXIT_NOTIFY, and a 2.6
        server takes EXIT then too), else the data channel's explicit-exit-notify. Nothing
        after AUTH_FAILED, RESTART or HALT (the server is ending the session itself), nor
        before key-method 2 (a stage-tls check: the server drops it after its hand-window)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.link is not None and self.channel is not None and self.server_key_message is not None \
                    and (self.outcome is None or self.outcome.kind in ("push-reply", "auth-pending")):
                self._say_goodbye()
        except (transport.TransportError, TLSFailure, _StageFailed, OSError):
            pass
        finally:
            try:
                if self.link is not None and self.channel is not None:
                    self._flush(acks="now")  # what the server sent last is ACKed before we go
            except (transport.TransportError, OSError):
                pass
            self._close_link()
            if self.data_result is not None:
                self.result.data = self.data_result

    def _say_goodbye(self):
        flags = (self.push_reply or {}).get("protocol_flags") or []
        if "cc-exit" in flags or self.push_reply is None:
            self._send_text(EXIT)
            self._pump(lambda: self.channel.idle, time.monotonic() + CLOSE_BUDGET)
            self.result.exit_sent = "cc-exit"
            return
        try:
            from .datachannel import send_explicit_exit_notify
        except ImportError:
            return
        if send_explicit_exit_notify(self):
            self.result.exit_sent = "explicit-exit-notify"

    def _close_link(self):
        if self.link is not None:
            self.link.close()
            self.link = None

    # moving packets -----------------------------------------------------------------------------

    def _send_text(self, message: bytes):
        self.tls_client.send(message)
        self._queue_tls_output()
        self._flush()

    def _send_wire(self, packet: bytes):
        if self.started is None:
            self.started = time.monotonic()
        self.exchange.append((time.time(), self._local, self._remote,
                              self.proto, packet, True))
        self.link.send(packet)

    def _flush(self, acks=True):
        for packet in self.channel.outgoing(acks):
            self._send_wire(packet)
        if self._after_flush is not None:  # work that can wait until our packets are out
            work, self._after_flush = self._after_flush, None
            work()

    def _pump(self, done, until) -> bool:
        """Send what is due, read and handle packets, until ``done()`` or ``until``.
        ACKs still owed when done wait for our next packet (so the server's reset is
        ACKed in our ClientHello's packet, as OpenVPN does) or for close()."""
        while True:
            if done():
                self._flush(acks=False)
                return True
            self._flush()
            now = time.monotonic()
            if now >= until:
                return False
            due = self.channel.next_due()
            wait_until = until if due is None else max(min(until, due), now + 1e-4)
            self._quickack()
            try:
                wire = self.link.receive(wait_until)
            except transport.Timeout:
                continue
            self._handle(wire)
            self._drain(done)

    def _drain(self, done):
        """Handle what has already arrived before answering: a server flight in several
        packets is then ACKed once, in our next packet, not by a P_ACK_V1 per packet."""
        import select

        while not done():
            # (a socket timeout cannot poll: Python rounds it up to a millisecond)
            buffered = len(getattr(self.link, "_buffer", b"")) >= 2  # TCP: frames already read
            if not buffered and not select.select([self.link.sock], [], [], 0)[0]:
                return
            try:
                wire = self.link.receive(time.monotonic() + 0.05)
            except transport.Timeout:
                return
            self._handle(wire)

    def _quickack(self):
        """TCP: ACK the server's segments at once. The server does not set TCP_NODELAY,
        so with our delayed ACKs its next small packet would wait ~40 ms on Nagle
        (Linux clears the flag after use: set again before each read)."""
        if self.proto == "tcp" and hasattr(socket, "TCP_QUICKACK"):
            try:
                self.link.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                pass

    def _handle(self, wire: bytes):
        from ..wrap import WrapError

        self.exchange.append((time.time(), self._remote, self._local,
                              self.proto, wire, False))
        if wire and wire[0] >> 3 in DATA_OPCODES:  # data channel: datachannel.py reads it
            self._data_queue.append(wire)
            return
        try:
            received = self.channel.read(wire)
        except WrapError as error:
            if self._server_reset is None and not self.channel.packets_received:
                self._first_reply_unreadable(wire, error)
            self.channel.ignored.append(str(error))
            return
        if received.key_id != 0:
            self.channel.ignored.append(f"key_id {received.key_id} (renegotiation is not done here)")
            return
        if received.opcode == P_CONTROL_HARD_RESET_SERVER_V2:
            if self._server_reset is None:
                if received.acks and received.acks[0] != 0 or (received.acks and received.remote_session_id
                                                               != self.channel.session_id):
                    raise _StageFailed("wrong-reply", "the server's reset does not answer ours "
                                                      "(another session id)")
                self._server_reset = received
                self.channel.resend_wkc = bool(early_negotiation_flags(received.tlvs) & 1)
        elif self._server_reset is None:
            self.channel.ignored.append(f"{received.opcode_name} before the server's reset")
            return
        try:
            data = self.channel.receive(received)
        except ProtocolError as error:
            self.channel.ignored.append(str(error))
            return
        if data:
            self._tls_bytes_in += len(data)
            self.tls_client.feed(data)
            self._tls_step()

    def _first_reply_unreadable(self, wire, error):
        from ..probe import _looks_like_server_reset

        if self.wrapper.wrapping.kind != "none" and _looks_like_server_reset(wire):
            raise _StageFailed("bad-authentication", f"the server answered, but its reply does not verify with "
                                                     f"our key ({error})")
        raise _StageFailed("not-openvpn", f"the reply is not OpenVPN ({wire[:16].hex(' ')}...)")

    def _on_record(self, record: bytes):
        if self._km_sent and self.server_key_message is None:
            try:
                self.server_key_message = parse_server_message(record)
            except KeyMethodError as error:
                raise _StageFailed("tls-error", f"the server's key-method 2 message cannot be read: {error}") \
                    from None
            self.key_exchange.server_random1, self.key_exchange.server_random2 = server_randoms(record)
            if self._wants("push") and self.outcome is None:
                self._send_push_request()  # as OpenVPN does, at once (a 2.6 server may push first anyway)
            return
        for message in self._reader.feed(record):
            self.control_messages.append(_redact(message))
            if message.startswith("PUSH_REPLY"):
                if self._push_parts.add(message) and self.outcome is None:
                    from .push import PushOutcome

                    self.push_reply = parse_options(self._push_parts.parts)
                    self.result.push_reply = self.push_reply
                    self.outcome = PushOutcome("push-reply", reply=self.push_reply)
                continue
            outcome = classify(message)
            if outcome is not None and (self.outcome is None or outcome.kind in ("restart", "halt", "exit")):
                if self.outcome is None or self.outcome.kind != "push-reply":
                    self.outcome = outcome


def _redact(message: str) -> str:
    if message.startswith("PUSH_REPLY"):
        return ",".join("auth-token [hidden]" if part.startswith("auth-token") else part
                        for part in message.split(","))
    return message


def _new_session_id() -> int:
    while True:
        value = int.from_bytes(os.urandom(8), "big")
        if value:
            return value


def _gui_version():
    from .. import __version__

    return f"ovpndiag_{__version__}"


def _transport_verdict(error, proto, stage):
    kind = getattr(error, "kind", "error")
    if stage == "reset":
        return {"refused": "port-closed", "timeout": "no-connection" if proto == "tcp" else "server-silent",
                "closed": "connection-closed", "reset": "connection-reset", "not-openvpn": "not-openvpn",
                "unreachable": "unreachable"}.get(kind, "unreachable")
    if kind == "not-openvpn":  # TCP framing that cannot be OpenVPN's, mid-handshake
        return "tls-error"
    return "server-stopped"  # closed, reset, or ICMP port unreachable: the server is gone mid-handshake
