"""A class handler whose setup() always fails."""


class Handler:
    def setup(self) -> None:
        raise RuntimeError("cannot connect to the database")

    def handle(self, data: bytes) -> None:
        pass
