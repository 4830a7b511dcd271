"""The gateway's server with identities: every socket connects with a verified token.

A CONNECT without a valid token gets a connect error that says why (``{"message": "token
expired"}``), is logged once a minute per client address and reason, and counted by reason.
A connected socket joins its user's room, may join and publish where its claims allow
(`permissions`), and is disconnected when its token expires unless a ``refresh`` brought a
fresh one. That disconnect is the server's: its recovery session ends with it.

Recovery stays the subject's: a session's record carries the subject it was made for, and
is recovered only by a connection whose token names the same subject (another subject
presenting its pid gets a fresh session, and the owner's session is left as it was).
Restored rooms its current claims no longer allow are dropped before the replay is read,
so none of their missed events is delivered.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from socketio import packet

from socketio_kafka.adapter.recovery import Fresh
from socketio_kafka.adapter.sessions import Session

from .auth import Claims, Refusal, TokenVerifier, token_from, user_room
from .errors import TokenRefused
from .guard import GuardedServer
from .limits import LogEvery, client_address
from .permissions import Action, Permissions

__all__ = ["IdentityServer", "SubjectChanged"]

logger = logging.getLogger("socketio_kafka.gateway")

#: Keys of a session record's data when the node checks tokens: the subject beside the
#: app's own session data.
_SUBJECT = "socketio_kafka:sub"
_APP_DATA = "socketio_kafka:data"
_LOG_EVERY_S = 60.0
_LOG_KEYS = 10_000
#: The claims of the connection whose CONNECT is being handled (recovery's checks run
#: inside it, on the adapter's side, and see no connection of their own).
_CONNECTING: contextvars.ContextVar[Claims | None] = contextvars.ContextVar(
    "socketio_kafka_connecting", default=None
)


class SubjectChanged(TokenRefused):
    """A ``refresh`` brought a token for another subject: a socket keeps its identity."""

    def __init__(self) -> None:
        super().__init__("subject_changed")


@dataclass(slots=True)
class _Identity:
    claims: Claims
    expiry: asyncio.TimerHandle | None = None
    #: Its token expired and its socket is being disconnected: too late to refresh.
    expired: bool = False


class IdentityServer(GuardedServer):
    """`GuardedServer` that requires a token when given a ``verifier`` (else it is open)."""

    def __init__(
        self,
        *args: Any,
        verifier: TokenVerifier | None = None,
        permissions: Permissions | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.verifier = verifier
        self.permissions = permissions or Permissions()
        #: Connections refused, by reason (`auth.Refusal`), for /metrics.
        self.refusals: collections.Counter[str] = collections.Counter()
        self._identities: dict[tuple[str, str], _Identity] = {}
        self._logged = LogEvery(_LOG_EVERY_S, _LOG_KEYS)
        self._expiring: set[asyncio.Task[None]] = set()

    # -- the client protocol's gate ------------------------------------------------------

    async def allows(self, sid: str, namespace: str, room: str, action: Action) -> bool:
        """Whether socket ``sid`` may ``action`` (join, publish) ``room``."""
        if self.verifier is None:
            return True
        identity = self._identity(sid, namespace)
        if identity is None or identity.expired:  # expired: its disconnect is under way
            return False
        return await self.permissions.allows(identity.claims, room, action)

    async def refresh(
        self,
        sid: str,
        namespace: str,
        token: object,
        earlier: Callable[[], Awaitable[None]] | None = None,
    ) -> float | None:
        """Replace a socket's token with a fresh one of the same subject; rooms the new
        claims do not allow are left, once ``earlier`` is done (a join authorized under
        the old claims, say). Its ``exp``; raises `TokenRefused`."""
        if self.verifier is None:
            raise TokenRefused("tokens_not_checked")
        claims = self.verifier.verify(token)
        key = (self.manager.eio_sid_from_sid(sid, namespace), namespace)
        identity = self._identities.get(key)
        if identity is not None and identity.expired:
            # Its disconnect is under way: acked, the refresh would be a promise broken.
            raise TokenRefused(Refusal.TOKEN_EXPIRED)
        if identity is None or identity.claims.subject != claims.subject:
            raise SubjectChanged
        identity.claims = claims
        self._schedule_expiry(key)
        if earlier is not None:
            await earlier()
        for room in await self._disallowed(claims, self.manager.get_rooms(sid, namespace), sid):
            await self.leave_room(sid, room, namespace=namespace)
        return claims.expires

    # -- connections ---------------------------------------------------------------------

    async def _judge_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        if self.verifier is None:
            await super()._judge_connect(eio_sid, namespace, data)
            return
        environ = self.environ.get(eio_sid, {})
        try:
            claims = self.verifier.verify(token_from(data, environ))
        except TokenRefused as exc:
            await self._refuse_token(eio_sid, namespace, environ, exc)
            return
        key = (eio_sid, namespace)
        if key in self._identities:
            # Connected already: python-socketio refuses the second CONNECT; the socket
            # keeps the identity it has.
            await super()._judge_connect(eio_sid, namespace, data)
            return
        self._identities[key] = _Identity(claims)
        connecting = _CONNECTING.set(claims)
        try:
            await super()._judge_connect(eio_sid, namespace, data)
        finally:
            _CONNECTING.reset(connecting)
            sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
            if sid is None or not self.manager.is_connected(sid, namespace):
                self._forget(key)  # refused by the app, or gone while connecting
            else:
                self._schedule_expiry(key)

    async def _send_packet(self, eio_sid: str, pkt: packet.Packet) -> None:
        # A fresh socket's CONNECT reply (a recovered one's has its rooms back): its user's
        # room is joined before the client can act, and is in its first session record.
        if pkt.packet_type == packet.CONNECT and isinstance(pkt.data, dict) and "sid" in pkt.data:
            identity = self._identities.get((eio_sid, pkt.namespace or "/"))
            if identity is not None:
                room = user_room(identity.claims.subject)
                await self.enter_room(pkt.data["sid"], room, namespace=pkt.namespace or "/")
        await super()._send_packet(eio_sid, pkt)

    async def _handle_disconnect(
        self, eio_sid: str, namespace: str | None, reason: str | None = None
    ) -> None:
        namespace = namespace or "/"
        # Over long-polling a DISCONNECT can be handled while its connection's CONNECT is
        # judged: it finds no socket, and the identity stays the CONNECT's (which forgets
        # it if it fails), else the socket it restores has no token to expire.
        connected = self.manager.sid_from_eio_sid(eio_sid, namespace) is not None
        try:
            await super()._handle_disconnect(eio_sid, namespace, reason)
        finally:
            if connected:
                self._forget((eio_sid, namespace))

    async def disconnect(
        self, sid: str, namespace: str | None = None, ignore_queue: bool = False
    ) -> None:
        namespace = namespace or "/"
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        await super().disconnect(sid, namespace, ignore_queue=ignore_queue)
        if eio_sid is not None and not self.manager.is_connected(sid, namespace):
            self._forget((eio_sid, namespace))

    async def _refuse_token(
        self, eio_sid: str, namespace: str, environ: dict[str, Any], exc: TokenRefused
    ) -> None:
        self.refusals[exc.reason] += 1
        address = client_address(
            environ, trust_forwarded_for=self.limits.limits.trust_forwarded_for
        )
        if self._logged.due((address, exc.reason)):
            logger.warning("refused a connection from %s: %s", address, exc)
        await super()._send_packet(
            eio_sid,
            self.packet_class(
                packet.CONNECT_ERROR, data={"message": str(exc)}, namespace=namespace
            ),
        )

    def subject(self, sid: str, namespace: str) -> str | None:
        identity = self._identity(sid, namespace)
        return None if identity is None else identity.claims.subject

    def _identity(self, sid: str, namespace: str) -> _Identity | None:
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        return None if eio_sid is None else self._identities.get((eio_sid, namespace))

    def _forget(self, key: tuple[str, str]) -> None:
        identity = self._identities.pop(key, None)
        if identity is not None and identity.expiry is not None:
            identity.expiry.cancel()

    # -- token lifetime ------------------------------------------------------------------

    def _schedule_expiry(self, key: tuple[str, str]) -> None:
        identity = self._identities.get(key)
        if identity is None:
            return
        if identity.expiry is not None:
            identity.expiry.cancel()
            identity.expiry = None
        if identity.claims.expires is None:
            return
        assert self.verifier is not None
        delay = identity.claims.expires + self.verifier.leeway - time.time()
        identity.expiry = asyncio.get_running_loop().call_later(max(delay, 0), self._expire, key)

    def _expire(self, key: tuple[str, str]) -> None:
        if (identity := self._identities.get(key)) is not None:
            identity.expired = True
        task = asyncio.get_running_loop().create_task(self._disconnect_expired(*key))
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    async def _disconnect_expired(self, eio_sid: str, namespace: str) -> None:
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None:
            return
        logger.info("sid %s [%s]: its token expired; disconnecting", sid, namespace)
        if self.recovery is not None:
            # Ended before the client is told: reconnecting at once, it must not find it.
            await self._end(sid, namespace, None)
        await self.disconnect(sid, namespace=namespace)

    # -- recovery (RecoveringAsyncServer's steps, for the subject's own sessions) --------

    def _refusal(self, session: Session | None, namespace: str) -> Fresh | None:
        refusal = super()._refusal(session, namespace)
        if refusal is None and self.verifier is not None and not _owned(session):
            return Fresh.OTHER_SUBJECT
        return refusal

    async def _close_stale_transport(self, session: Session, eio_sid: str) -> bool:
        # A pid is a secret, yet one stolen must not cut its owner's live connection.
        if self.verifier is not None and not _owned(session):
            return False
        return await super()._close_stale_transport(session, eio_sid)

    async def _judge(
        self, eio_sid: str, namespace: str, claim: Any
    ) -> tuple[Session, tuple[int, ...]] | bool:
        judged = await super()._judge(eio_sid, namespace, claim)
        claims = _CONNECTING.get()
        if self.verifier is None or claims is None or not isinstance(judged, tuple):
            return judged
        session, start = judged
        dropped = await self._disallowed(claims, session.rooms, session.sid)
        if dropped:
            logger.info(
                "sid %s recovers without %d room(s) no longer allowed", session.sid, len(dropped)
            )
        rooms = tuple(room for room in session.rooms if room not in dropped)
        data = session.data.get(_APP_DATA) if isinstance(session.data, dict) else None
        return replace(session, rooms=rooms, data=data), start

    async def _release(self, session: Session) -> None:
        # A session judged for this connection carries the app's data alone (`_judge`):
        # released as it is (the connection gone meanwhile), its record lost its subject,
        # and its owner's next claim was refused as another subject's.
        claims = _CONNECTING.get()
        wrapped = isinstance(session.data, dict) and _SUBJECT in session.data
        if self.verifier is not None and claims is not None and not wrapped:
            session = replace(session, data={_SUBJECT: claims.subject, _APP_DATA: session.data})
        await super()._release(session)

    async def _snapshot(self, sid: str, namespace: str) -> Session | None:
        snapshot: Session | None = await super()._snapshot(sid, namespace)
        if snapshot is None or self.verifier is None:
            return snapshot
        identity = self._identity(sid, namespace)
        subject = identity.claims.subject if identity is not None else None
        return replace(snapshot, data={_SUBJECT: subject, _APP_DATA: snapshot.data})

    async def _disallowed(self, claims: Claims, rooms: Iterable[str], sid: str) -> set[str]:
        """Of a socket's rooms, those its claims no longer let it join (its own stay)."""
        own = {sid, user_room(claims.subject)}
        return {
            room
            for room in list(rooms)
            if room not in own and not await self.permissions.allows(claims, room, "join")
        }


def _owned(session: Session | None) -> bool:
    claims = _CONNECTING.get()
    data = session.data if session is not None else None
    return claims is not None and isinstance(data, dict) and data.get(_SUBJECT) == claims.subject
