"""One reset exchange with an OpenVPN server, explained.

``probe(settings)`` resolves the host, sends P_CONTROL_HARD_RESET_CLIENT_V2 (or
V3 with a tls-crypt-v2 client key) over UDP or TCP from an ordinary socket,
retries over UDP, validates the first reply step by step and returns a
``ProbeResult``: what was sent and received when, every check with its outcome,
a verdict in plain words and the likely causes with what to try next.
Nothing here prints; renderers turn the result into text, JSON or a check line.
"""

import os
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional

from . import transport
from .layers import EARLY_NEG_START, SERVER_RESETS, OpenVPNReset, from_wire
from .protocol import PLAIN, Opcode, first_byte
from .settings import ProbeSettings, describe_wrapper

# Verdicts: what the server did, from the client's side.
OK = "ok"
NO_REPLY = "no-reply"
PORT_CLOSED = "port-closed"
NO_CONNECTION = "no-connection"
CONNECTION_CLOSED = "connection-closed"
CONNECTION_RESET = "connection-reset"
NOT_OPENVPN = "not-openvpn"
BAD_AUTH = "bad-authentication"
WRONG_REPLY = "wrong-reply"
UNRESOLVABLE = "unresolvable"
UNREACHABLE = "unreachable"


@dataclass
class Attempt:
    number: int
    address: str
    sent_at: float  # seconds since the probe started
    outcome: str  # "reply", "timeout", "unanswered" (sent after the one answered), "refused", "closed", ...
    rtt: Optional[float] = None  # seconds from this send to the reply
    detail: str = ""
    session_id: str = ""  # each attempt is its own session (hex)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    severity: str = "critical"  # a failed "warning" check does not fail the probe


@dataclass
class ProbeResult:
    host: str
    port: int
    proto: str
    wrapping: str
    addresses: List[str] = field(default_factory=list)
    attempts: List[Attempt] = field(default_factory=list)
    checks: List[Check] = field(default_factory=list)
    reply: Optional[dict] = None  # the reply's fields, as dissected
    verdict: str = NO_REPLY
    message: str = ""
    causes: List[str] = field(default_factory=list)
    rtt: Optional[float] = None
    address: Optional[str] = None  # the one that answered
    elapsed: float = 0.0
    exchange: list = field(default_factory=list, repr=False)  # (time, local, remote, proto, bytes, sent)

    @property
    def ok(self) -> bool:
        return self.verdict == OK

    @property
    def retried(self) -> bool:
        """Answered, but not to the first reset sent to that address."""
        mine = [a for a in self.attempts if a.address == self.address]
        return self.ok and bool(mine) and mine[0].outcome != "reply"

    @property
    def warnings(self) -> List[Check]:
        return [c for c in self.checks if not c.ok and c.severity == "warning"]

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("exchange")
        data["ok"] = self.ok
        return data


def new_session_id() -> int:
    while True:
        value = int.from_bytes(os.urandom(8), "big")
        if value:  # OpenVPN never uses an all-zero session id
            return value


def probe(settings: ProbeSettings) -> ProbeResult:
    started = time.monotonic()
    deadline = started + settings.timeout
    result = ProbeResult(settings.host, settings.port, settings.proto, settings.wrapping_name)
    try:
        addresses = transport.resolve_within(settings.host, settings.port, settings.proto, settings.family,
                                             deadline - time.monotonic())
    except (OSError, UnicodeError, transport.Timeout) as error:
        family = f" IPv{settings.family}" if settings.family else ""
        result.verdict = UNRESOLVABLE
        result.message = f"cannot resolve {settings.host}{family}: {getattr(error, 'strerror', None) or error}"
        result.causes = ["a typo in the host name, or DNS is not answering for it"]
        return _finish(result, started)
    result.addresses = [str(a) for a in addresses]
    for index, address in enumerate(addresses):
        # Each address gets an equal share of what is left, the last one all of it:
        # -t is the whole budget, and one silent address must not starve the next.
        share = (deadline - time.monotonic()) / (len(addresses) - index)
        _probe_address(settings, address, result, started, min(deadline, time.monotonic() + share))
        if result.verdict not in (NO_REPLY, PORT_CLOSED, NO_CONNECTION, UNREACHABLE) \
                or time.monotonic() >= deadline:
            break
    return _finish(result, started)


def _finish(result, started):
    result.elapsed = time.monotonic() - started
    if not result.message:
        result.message, result.causes = explain(result)
    return result


def _probe_address(settings, address, result, started, deadline):
    """Send resets to one address until a reply, a hard error, or its deadline.

    Every attempt is a new session (its own session id), so a late reply is
    credited to the reset it answers, with its true round-trip time. The last
    attempt listens until the deadline: -t is the whole budget."""
    wrapper = settings.wrapper
    v3 = wrapper.wrapping.kind == "tls-crypt-v2"
    net_time = int(time.time())
    attempts = 1 + settings.retries if settings.proto == "udp" else 1
    try:
        link = (transport.UDPTransport(address) if settings.proto == "udp"
                else transport.TCPTransport(address, deadline))
    except transport.TransportError as error:
        _record_failure(result, error, address, started)
        return
    sent = {}  # session id -> (attempt, monotonic send time)
    try:
        for number in range(1, attempts + 1):
            if time.monotonic() >= deadline:
                break
            session_id = new_session_id()
            plain = bytes(OpenVPNReset(opcode=Opcode.P_CONTROL_HARD_RESET_CLIENT_V2, session_id=session_id))
            if v3:  # same plain layout, other opcode; wrap() appends the client's WKc
                plain = bytes([first_byte(Opcode.P_CONTROL_HARD_RESET_CLIENT_V3)]) + plain[1:]
            replay_packet_id = (EARLY_NEG_START if v3 else 0) + number
            packet = wrapper.wrap(plain, replay_packet_id, net_time)
            now = time.monotonic()
            attempt = Attempt(len(result.attempts) + 1, str(address), round(now - started, 6), "timeout",
                              session_id=f"{session_id:016x}")
            result.attempts.append(attempt)
            sent[session_id] = (attempt, now)
            result.exchange.append((time.time(), link.local, (address.ip, address.port), settings.proto,
                                    packet, True))
            link.send(packet)
            listen_until = deadline if number == attempts else min(deadline, now + settings.retry_interval)
            try:
                reply = link.receive(listen_until)
            except transport.Timeout:
                continue
            received = time.monotonic()
            result.exchange.append((time.time(), (address.ip, address.port), link.local, settings.proto,
                                    reply, False))
            # A reply that echoes none of our sessions (or cannot be read) is judged
            # against the latest reset, and validation says what is wrong with it.
            echoed = answered_session(reply, wrapper)
            answered_id = echoed if echoed in sent else session_id
            answered, answered_at = sent[answered_id]
            answered.outcome, answered.rtt = "reply", received - answered_at
            for later in result.attempts[result.attempts.index(answered) + 1:]:
                later.outcome, later.detail = "unanswered", f"the reply to attempt {answered.number} came first"
            result.address, result.rtt = str(address), answered.rtt
            validate_reply(reply, answered_id, settings, result)
            return
        for attempt, at in sent.values():
            attempt.detail = f"no reply within {time.monotonic() - at:.1f} s"
        result.verdict = NO_REPLY
    except transport.TransportError as error:
        _record_failure(result, error, address, started)
    finally:
        link.close()


def answered_session(reply: bytes, wrapper) -> Optional[int]:
    """The session id a server reset echoes, when it can be read: through the
    wrapping's layout (a tls-auth HMAC need not verify for this; tls-crypt must
    decrypt). None for anything else."""
    wire, wrapping = reply, wrapper.wrapping
    if wrapping.is_tls_crypt:
        from .wrap import WrapError

        try:
            wire = wrapper.unwrap(reply).decrypted or reply
        except WrapError:
            return None
        wrapping = wrapping._replace(decrypted=True)
    packet, problem = from_wire(wire, wrapping)
    if problem or packet.opcode not in SERVER_RESETS or not packet.acks:
        return None
    return packet.remote_session_id


def _record_failure(result, error, address, started):
    if result.attempts and result.attempts[-1].address == str(address):
        attempt = result.attempts[-1]
    else:
        attempt = Attempt(len(result.attempts) + 1, str(address), round(time.monotonic() - started, 6), "")
        result.attempts.append(attempt)
    attempt.outcome, attempt.detail = error.kind, str(error)
    result.verdict = {
        "refused": PORT_CLOSED, "timeout": NO_CONNECTION if result.proto == "tcp" else NO_REPLY,
        "closed": CONNECTION_CLOSED, "reset": CONNECTION_RESET, "not-openvpn": NOT_OPENVPN,
        "unreachable": UNREACHABLE,
    }.get(error.kind, UNREACHABLE)
    if isinstance(error, transport.NotOpenVPN):
        result.address = str(address)
        result.checks.append(Check("reply is OpenVPN", False, f"starts with {_preview(error.data)}"))


def _preview(data: bytes) -> str:
    head = data[:24]
    printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head) >= len(head) * 0.8
    if printable:
        text = head.decode("ascii", "replace").replace("\r", "\\r").replace("\n", "\\n")
        return f"'{text}'" + ("..." if len(data) > 24 else "")
    return head.hex(" ") + (" ..." if len(data) > 24 else "")


# --- validation ----------------------------------------------------------------

def validate_reply(reply: bytes, session_id: int, settings: ProbeSettings, result: ProbeResult):
    """Check the reply step by step; sets result.checks, result.reply and the verdict."""
    checks = result.checks
    checks.append(Check("reply from the address probed", True, f"from {result.address}/{settings.proto}"))
    if not settings.validate:
        result.verdict = OK
        checks.append(Check("validation", True, "skipped (--no-validation)"))
        return
    wrapper, wire = settings.wrapper, reply
    if wrapper.wrapping.kind != "none" and not getattr(wrapper, "checks_replies", True):
        # check_openvpn given only the client's HMAC key: the reply is read, not verified
        checks.append(Check(_auth_name(wrapper), True, "not checked (no server key given)"))
    elif wrapper.wrapping.kind != "none":
        from .wrap import WrapError

        try:
            wire = wrapper.unwrap(reply).decrypted or reply
            checks.append(Check(_auth_name(wrapper), True, "valid"))
        except WrapError as error:
            if not _looks_like_server_reset(reply):
                checks.append(Check("reply is OpenVPN", False, f"starts with {_preview(reply)}"))
                result.verdict = NOT_OPENVPN
                return
            checks.append(Check(_auth_name(wrapper), False, f"{error}{_alternative(reply, wrapper)}"))
            result.verdict = BAD_AUTH
            return
    wrapping = wrapper.wrapping._replace(decrypted=wrapper.wrapping.is_tls_crypt)
    packet, problem = from_wire(wire, wrapping)
    if problem or packet.opcode not in SERVER_RESETS:
        reason = problem or f"a {packet.opcode_name}, not a server reset"
        checks.append(Check("reply is OpenVPN", False, f"starts with {_preview(reply)}: {reason}"))
        result.verdict = NOT_OPENVPN
        return
    result.reply = reply_fields(packet, len(reply))
    checks.append(Check("opcode", packet.opcode == Opcode.P_CONTROL_HARD_RESET_SERVER_V2, packet.opcode_name))
    checks.append(Check("key id 0", packet.key_id == 0, f"key_id {packet.key_id}"))
    checks.append(Check("acknowledges our reset (message packet-id 0)", 0 in packet.acks,
                        f"acks {list(packet.acks)}"))
    echoed = packet.remote_session_id if packet.acks else None
    checks.append(Check("echoes our session id", echoed == session_id,
                        f"{echoed:016x}" if echoed is not None else "no remote session id"))
    checks.append(Check("message packet-id 0", packet.message_packet_id == 0,
                        f"message packet-id {packet.message_packet_id}"))
    if wrapper.wrapping.kind != "none":
        replay = packet.replay_packet_id
        checks.append(Check("replay packet-id", 0 < replay < 0x1000, f"{replay}", "warning"))
        skew = packet.net_time - time.time()
        checks.append(Check("server clock", abs(skew) <= settings.max_skew,
                            f"net time {int(round(skew)):+d} s from ours", "warning"))
    if wrapper.wrapping.kind == "tls-crypt-v2":
        flags = [t for t in packet.tlvs if getattr(t, "type", None) == 1]
        checks.append(Check("early negotiation (asks for the WKc again)",
                            bool(flags) and bool(flags[0].flags.RESEND_WKC),
                            "EARLY_NEG_FLAGS RESEND_WKC" if flags else "no early-negotiation TLV",
                            "warning"))
    failed = [c for c in checks if not c.ok and c.severity == "critical"]
    result.verdict = OK if not failed else WRONG_REPLY


def _looks_like_server_reset(data):
    """First byte of a server reset with key id 0, and long enough to be one (the
    shortest: unwrapped, acknowledging the client's reset)."""
    from .wirelayout import control_layout

    layout = control_layout(PLAIN)
    shortest = layout.header + 1 + layout.after_acks[Opcode.P_CONTROL_HARD_RESET_SERVER_V2][1].size
    return len(data) >= shortest and data[0] in {first_byte(opcode) for opcode in SERVER_RESETS}


def _auth_name(wrapper):
    kind = wrapper.wrapping.kind
    return {"tls-auth": "tls-auth HMAC", "tls-crypt": "tls-crypt tag"}.get(kind, "tls-crypt-v2 tag")


def _alternative(reply, wrapper):
    """When the HMAC fails, name the settings it verifies with, if any. The server
    accepted our reset, so settings that send as we did are the answer; others
    are only a hint."""
    if wrapper.wrapping.kind != "tls-auth":
        return ""
    from .layers import HMAC_SIZES
    from .wrap import TLSAuth

    found = [TLSAuth(wrapper.key, direction, digest) for digest in HMAC_SIZES for direction in (1, 0, None)
             if (digest, direction) != (wrapper.digest, wrapper.direction)]
    found = [candidate for candidate in found if candidate.verify(reply)]
    consistent = [c for c in found if c.digest == wrapper.digest and c.send_index == wrapper.send_index]
    if consistent:
        return f"; it verifies as {describe_wrapper(consistent[0])}"
    if found:
        return f"; the reply alone verifies as {describe_wrapper(found[0])}"
    return ""


def reply_fields(packet, length) -> dict:
    """The reply's header fields for reports and JSON (no key material)."""
    fields = {"opcode": packet.opcode_name, "key_id": packet.key_id, "length": length,
              "session_id": f"{packet.session_id:016x}"}
    for name in ("replay_packet_id", "net_time", "message_packet_id"):
        if name in packet.fields:
            fields[name] = packet.getfieldval(name)
    if "acks" in packet.fields:
        fields["acks"] = list(packet.acks)
        if packet.acks:
            fields["remote_session_id"] = f"{packet.remote_session_id:016x}"
    if getattr(packet, "tlvs", None):
        fields["tlvs"] = [t.sprintf("%type%") for t in packet.tlvs]
    return fields


# --- the verdict in plain words --------------------------------------------------

def explain(result: ProbeResult):
    """(message, likely causes and what to try) for a finished probe."""
    wrapping = result.wrapping
    where = f"{result.address or (result.addresses[0] if result.addresses else result.host)}/{result.proto}"
    sends = len(result.attempts)
    if result.verdict == OK:
        return f"{where} answered in {result.rtt * 1000:.1f} ms ({_auth_summary(result)})", []
    if result.verdict == NO_REPLY:
        addresses = len(result.addresses)
        message = (f"no reply from {result.host}:{result.port}/{result.proto} to {sends} reset"
                   f"{'s' if sends != 1 else ''}" + (f" sent to {addresses} addresses" if addresses > 1 else "")
                   + f" in {result.elapsed:.1f} s")
        if result.proto == "tcp":  # connected: a wrong key would have made OpenVPN close the connection
            return message + " (the connection stayed open)", [
                "the service on this port accepts connections but is not OpenVPN, or the OpenVPN server "
                "is too busy to answer"]
        return message, _silence_causes(wrapping_kind(wrapping))
    if result.verdict == PORT_CLOSED:
        if result.proto == "udp":
            return (f"{where}: nothing listens on that UDP port (ICMP port unreachable)",
                    ["the OpenVPN server is not running, or listens on another port or protocol"])
        return (f"{where}: TCP connection refused",
                ["nothing listens on that TCP port: the server is down, or uses another port or UDP"])
    if result.verdict == NO_CONNECTION:
        return (f"{where}: no TCP connection within {result.elapsed:.1f} s",
                ["the port is filtered by a firewall, or the host is down"])
    if result.verdict == CONNECTION_CLOSED:
        return (f"{where}: the server closed the connection without answering our reset",
                ["OpenVPN over TCP drops the connection when the tls-auth/tls-crypt key, key-direction "
                 "or digest is wrong (or missing): check them, or try --try-keys",
                 "or the service on this port is not OpenVPN"])
    if result.verdict == CONNECTION_RESET:
        return (f"{where}: the connection was reset", ["the server or a firewall rejected the connection"])
    if result.verdict == NOT_OPENVPN:
        detail = next((c.detail for c in result.checks if c.name == "reply is OpenVPN"), "")
        return (f"{where}: the reply is not OpenVPN ({detail})",
                ["another service listens on this port (for example a web server on 443)"])
    if result.verdict == BAD_AUTH:
        check = next(c for c in result.checks if not c.ok)
        causes = ["the server uses other tls-auth/tls-crypt settings than given here"]
        if "verifies as" in check.detail:
            causes = [f"the server's reply{check.detail.split(';', 1)[1]}: use those settings"]
        return f"{where}: OpenVPN answered but its {check.name} is invalid ({check.detail.split(';')[0]})", causes
    if result.verdict == WRONG_REPLY:
        failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok and c.severity == "critical"]
        return (f"{where}: OpenVPN answered, but not as to our reset ({'; '.join(failed) or 'unreadable'})",
                ["a middlebox or another OpenVPN implementation answering differently, or a stale reply"])
    if result.verdict == UNREACHABLE:
        detail = result.attempts[-1].detail if result.attempts else ""
        return f"{where}: {detail or 'unreachable'}", ["no route to the host from here"]
    return result.verdict, []


def wrapping_kind(wrapping: str) -> str:
    """"none", "tls-auth", "tls-crypt" or "tls-crypt-v2" from a describe_wrapper() text."""
    first = wrapping.split(" ")[0].rstrip(",")
    return first if first.startswith("tls-") else "none"


def _silence_causes(kind):
    """Why a UDP server may have said nothing, most likely first."""
    causes = ["the port is filtered by a firewall, or the server is down"]
    if kind == "tls-auth":
        causes.append("the tls-auth key, key-direction or --auth digest differs from the server's: it "
                      "drops such resets without a word (its log shows 'packet HMAC authentication "
                      "failed' or 'cannot locate HMAC in incoming packet'); --try-keys finds the "
                      "combination it answers")
    elif kind == "tls-crypt-v2":
        causes.append("the client key was not made with this server's tls-crypt-v2 key (server log: "
                      "'Can not unwrap tls-crypt-v2 client key')")
    elif kind == "tls-crypt":
        causes.append("the tls-crypt key differs from the server's (server log: 'tls-crypt unwrap "
                      "error'); --try-keys also tries the key as tls-auth")
    else:
        causes.append("the server may need a key: it uses tls-auth or tls-crypt and silently drops "
                      "resets without it; give the key with --tls-auth/--tls-crypt/--tls-crypt-v2 or "
                      "--config PROFILE.ovpn")
    causes.append("the server rate-limits new sessions (--connect-freq-initial, by default 100 per "
                  "10 s) and drops resets beyond that without a word (its log: '--connect-freq-initial "
                  "... rate limit exceeded'): many probes or clients at once (checks of many services, "
                  "a --try-keys run) can go unanswered; try again when the period is over")
    return causes


def _auth_summary(result):
    check = next((c for c in result.checks if c.name in ("tls-auth HMAC", "tls-crypt tag", "tls-crypt-v2 tag")),
                 None)
    if check is None:
        return "no tls-auth/tls-crypt"
    label = result.wrapping.split(",")[0]
    state = "not checked" if check.detail.startswith("not checked") else "valid"
    return f"{label}, {'HMAC' if 'HMAC' in check.name else 'tag'} {state}"

