"""JSON Lines: one object per OpenVPN packet (or per session), keys as in README."""

import json

_dumps = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=True).encode
_HEX_IDS = {}  # session id -> its 16 hex digits: a session's packets repeat it
_HEX_IDS_MAX = 1 << 16


def packet_json(record, file: str = None) -> str:
    """``record``: a dissect.record.Record; its fields in their order, session ids in hex."""
    data = record.as_dict()
    session_id = record.session_id
    if session_id is not None:  # 16 lowercase hex digits, as the session ids are printed everywhere
        data["session_id"] = _HEX_IDS.get(session_id) or _hex_id(session_id)
        remote = record.remote_session_id
        if remote is not None:
            data["remote_session_id"] = _HEX_IDS.get(remote) or _hex_id(remote)
    if file is not None:
        data["file"] = file
    return _dumps(data)


def _hex_id(session_id):
    if len(_HEX_IDS) >= _HEX_IDS_MAX:
        _HEX_IDS.clear()
    text = _HEX_IDS[session_id] = "%016x" % session_id
    return text


def session_json(summary: dict) -> str:
    return _dumps(summary)
