"""Control messages after key-method 2: PUSH_REQUEST and what the server says.

Messages are NUL-terminated text inside TLS. The server answers PUSH_REQUEST
with one or more ``PUSH_REPLY,opt,opt,...`` (all but the last carry
``push-continuation 2``), or ends the session: ``AUTH_FAILED[,reason]``,
``RESTART[,text]``, ``HALT[,text]``; ``AUTH_PENDING[,timeout N]`` asks the user
for a web/2FA step; ``INFO``/``INFO_PRE`` carry text for the user.

``MessageReader`` cuts the plaintext into messages, ``PushReply`` joins the
continuations and ``parse_options`` turns them into facts for reports and the
data channel. An ``auth-token`` is a credential: kept out of every output.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

PUSH_REQUEST = b"PUSH_REQUEST\0"
EXIT = b"EXIT\0"
SECRET_OPTIONS = ("auth-token", "auth-token-user")


class MessageReader:
    """Control-channel text messages from TLS plaintext (records may split or join them)."""

    def __init__(self):
        self.buffer = b""

    def feed(self, data: bytes) -> List[str]:
        self.buffer += data
        messages = []
        while b"\0" in self.buffer:
            message, self.buffer = self.buffer.split(b"\0", 1)
            if message:
                messages.append(message.decode("utf-8", "replace"))
        return messages


@dataclass
class PushOutcome:
    """What the server answered to PUSH_REQUEST, when it is final."""

    kind: str  # "push-reply", "auth-failed", "auth-pending", "restart", "halt", "exit"
    text: str = ""  # the reason or message after the keyword
    reply: Optional[dict] = None


@dataclass
class PushReply:
    parts: List[str] = field(default_factory=list)  # option strings, in order, continuations joined

    def add(self, message: str) -> bool:
        """Take one PUSH_REPLY message; True when the reply is complete."""
        options = [o for o in message[len("PUSH_REPLY"):].lstrip(",").split(",") if o]
        last = True
        for option in options:
            words = option.split()
            if words[:1] == ["push-continuation"]:
                last = words[1:2] != ["2"]
                continue
            self.parts.append(option)
        return last


def classify(message: str) -> Optional[PushOutcome]:
    """A PushOutcome for messages that end the push stage (None for others:
    INFO, AUTH_PENDING's keep-alive ones are handled by the caller)."""
    head, _, rest = message.partition(",")
    if head == "AUTH_FAILED":
        return PushOutcome("auth-failed", rest.strip())
    if head == "AUTH_PENDING":
        return PushOutcome("auth-pending", rest.strip())
    if head == "RESTART":
        return PushOutcome("restart", rest.strip())
    if head == "HALT":
        return PushOutcome("halt", rest.strip())
    if head == "EXIT":
        return PushOutcome("exit", rest.strip())
    return None


def parse_options(parts: List[str]) -> dict:
    """The pushed options as facts; "raw" keeps them all (secrets blanked)."""
    facts: Dict[str, object] = {"raw": [], "routes": [], "routes_ipv6": [], "dns": [], "dhcp_options": [],
                                "protocol_flags": [], "peer_id": None, "cipher": None, "route_gateway": None,
                                "ifconfig": None, "ifconfig_ipv6": None, "topology": None, "ping": None,
                                "ping_restart": None, "redirect_gateway": None, "other": []}
    for option in parts:
        words = option.split()
        if not words:
            continue
        name, args = words[0], words[1:]
        if name in SECRET_OPTIONS:
            facts["raw"].append(f"{name} [hidden]")
            facts["auth_token"] = True
            continue
        facts["raw"].append(option)
        if name == "route":
            facts["routes"].append(" ".join(args))
        elif name == "route-ipv6":
            facts["routes_ipv6"].append(" ".join(args))
        elif name == "route-gateway" and args:
            facts["route_gateway"] = args[0]
        elif name == "ifconfig" and args:
            facts["ifconfig"] = args[:2]
        elif name == "ifconfig-ipv6" and args:
            facts["ifconfig_ipv6"] = args[:2]
        elif name == "peer-id" and args and args[0].isdigit():
            facts["peer_id"] = int(args[0])
        elif name == "cipher" and args:
            facts["cipher"] = args[0]
        elif name == "protocol-flags":
            facts["protocol_flags"] = args
        elif name == "topology" and args:
            facts["topology"] = args[0]
        elif name in ("ping", "ping-restart") and args and args[0].isdigit():
            facts[name.replace("-", "_")] = int(args[0])
        elif name == "dhcp-option":
            facts["dhcp_options"].append(" ".join(args))
            if args[:1] == ["DNS"] and len(args) > 1:
                facts["dns"].append(args[1])
        elif name == "dns":
            if len(args) >= 4 and args[0] == "server" and args[2] == "address":
                facts["dns"].extend(args[3:])
            facts["other"].append(option)
        elif name == "redirect-gateway":
            facts["redirect_gateway"] = args
        elif name == "key-derivation" and args:
            facts["key_derivation"] = args[0]
        else:
            facts["other"].append(option)
    return facts
