"""The Client: drives the handshake stage by stage (skeleton; being written)."""

from . import STAGES, HandshakeResult, HandshakeSettings, Stage


class Client:
    def __init__(self, settings: HandshakeSettings):
        self.settings = settings

    def run(self, stage="data") -> HandshakeResult:
        raise NotImplementedError("the staged handshake is being written")

    def reset(self) -> Stage:
        raise NotImplementedError

    def tls(self) -> Stage:
        raise NotImplementedError

    def auth(self) -> Stage:
        raise NotImplementedError

    def push(self) -> Stage:
        raise NotImplementedError

    def data(self) -> Stage:
        raise NotImplementedError

    def close(self):
        pass
