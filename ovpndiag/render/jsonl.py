"""JSON Lines: one object per OpenVPN packet (or per session), keys as in README."""

import json

_dumps = json.JSONEncoder(separators=(", ", ": "), ensure_ascii=True).encode


def packet_json(record: dict, file: str = None) -> str:
    data = {key: value for key, value in record.items() if key[0] != "_"}
    if "session_id" in data:  # 16 lowercase hex digits, as the session ids are printed everywhere
        data["session_id"] = f"{data['session_id']:016x}"
        if "remote_session_id" in data:
            data["remote_session_id"] = f"{data['remote_session_id']:016x}"
    if file is not None:
        data["file"] = file
    return _dumps(data)


def session_json(summary: dict) -> str:
    return _dumps(summary)
