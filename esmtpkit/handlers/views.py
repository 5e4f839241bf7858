"""
What each handler of a L{Chain <esmtpkit.handlers.Chain>} sees as its
C{session}: the connection's L{Session}, except for its own C{data}, and
a transaction view with its own C{data}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..session import Session, Transaction

__all__ = ["MemberSession", "MemberTransaction"]


class MemberTransaction:
    """
    A handler's view of the open L{Transaction}: everything is the
    transaction's (recipients, headers, C{modifications}, ...), read and
    written through, except L{data}, which is this handler's own.

    @ivar shared: the transaction itself.
    """

    __slots__ = ("shared", "_data")

    def __init__(self, transaction: Transaction) -> None:
        object.__setattr__(self, "shared", transaction)
        object.__setattr__(self, "_data", None)

    @property
    def data(self) -> dict[str, Any]:
        """
        Free for this handler's own use, for this transaction.
        """
        data = self._data
        if data is None:
            data = {}
            object.__setattr__(self, "_data", data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shared, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.shared, name, value)

    def __repr__(self) -> str:
        return f"<MemberTransaction of {self.shared!r}>"


class MemberSession:
    """
    A handler's view of the connection's L{Session}: everything is the
    session's, read and written through, except L{data} (this handler's
    own) and L{transaction} (a L{MemberTransaction} with this handler's
    own C{data}, the same view for the whole transaction).

    @ivar shared: the session itself (its C{data} is the chain's own,
        which no member sees through its view).
    @ivar modifiedBefore: whether a member before this one (in this chain
        or an enclosing one) declares modifications (C{mayModify}).
    """

    __slots__ = ("shared", "_data", "_view", "modifiedBefore")

    def __init__(self, session: Session, modifiedBefore: bool = False) -> None:
        object.__setattr__(self, "shared", session)
        object.__setattr__(self, "_data", None)
        object.__setattr__(self, "_view", None)
        object.__setattr__(self, "modifiedBefore", modifiedBefore)

    @property
    def data(self) -> dict[str, Any]:
        """
        Free for this handler's own use, for this connection.
        """
        data = self._data
        if data is None:
            data = {}
            object.__setattr__(self, "_data", data)
        return data

    @property
    def transaction(self) -> MemberTransaction | None:
        """
        This handler's view of the open transaction, or L{None}.
        """
        transaction = self.shared.transaction
        if transaction is None:
            return None
        view = self._view
        if view is None or view.shared is not transaction:
            view = MemberTransaction(transaction)
            object.__setattr__(self, "_view", view)
        return view

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shared, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.shared, name, value)

    def __repr__(self) -> str:
        return f"<MemberSession of {self.shared!r}>"
