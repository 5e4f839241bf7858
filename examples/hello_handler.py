from esmtpkit import ESMTPHandler
from esmtpkit.session import Params


class HelloHandler(ESMTPHandler):
    """Accept mail for example.org only; print each message's Subject and size."""

    def RCPT(self, recipient: str, params: Params) -> tuple[int, str] | None:
        if not recipient.lower().endswith("@example.org"):
            return (550, "5.7.1 Relaying denied: we only take mail for example.org")
        return None  # None means the default reply: 250 2.1.5 <...>, recipient ok

    def HEADER(self, name: str, value: str) -> None:
        if name.lower() == "subject":
            print("Subject:", value)

    def EOM(self) -> None:
        transaction = self.session.transaction
        assert transaction is not None  # always set while EOM runs
        print("Message size:", transaction.size, "bytes")
        return None  # 250 2.0.0 Message accepted for delivery as <id>
