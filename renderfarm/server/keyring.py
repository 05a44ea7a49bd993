"""Who may talk to the farm service, and as whom.

A client is its CurveZMQ public key, named by its key file: ``clients/alice.key`` is the
client ``alice``; ``admins/wrangler.key`` is the admin ``wrangler``. The folders are read
again whenever they change, so keys added or removed take effect without a restart, for new
connections (the ZAP handshake) and for every request of connections already open.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: what a client's name (its key file's stem) may hold: it names topics and folders
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

#: the one caller of a service without keys (``--insecure-loopback``): every local user
LOCAL = "local"


@dataclass(frozen=True)
class Caller:
    """Who sent a request.

    Attributes:
        name: the client's name (its key file's stem), or ``local`` without keys.
        admin: whether it may see and act on every job.
        key: its public key (Z85), or empty without keys.
    """

    name: str
    admin: bool = False
    key: str = ""

    def may_see(self, owner: str) -> bool:
        """Whether this caller may see and act on a job of ``owner``."""
        return self.admin or owner == self.name


class KeyRing:
    """The allowed clients' and admins' public keys, by name, read from their folders.

    Args:
        clients: the folder of clients' public keys (``NAME.key``).
        admins: the folder of admins' public keys, or None.
    """

    def __init__(self, clients: Path, admins: Path | None = None) -> None:
        self.clients = clients
        self.admins = admins
        self._lock = threading.Lock()
        self._stamp: tuple[object, ...] | None = None
        self._by_key: dict[bytes, Caller] = {}
        self._by_name: dict[str, Caller] = {}
        #: counts the reloads that removed (or replaced) a key
        self.removals = 0
        self._reload()

    def _folders(self) -> list[tuple[Path, bool]]:
        folders = [(self.clients, False)]
        if self.admins is not None:
            folders.append((self.admins, True))
        return folders

    def _stamp_now(self) -> tuple[object, ...]:
        stamp: list[object] = []
        for folder, _admin in self._folders():
            try:
                stamp.append(folder.stat().st_mtime_ns)
                stamp.extend((p.name, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.key")))
            except OSError:
                stamp.append(None)
        return tuple(stamp)

    def _reload(self) -> None:
        from zmq.auth import load_certificate

        stamp = self._stamp_now()
        with self._lock:
            if stamp == self._stamp:
                return
            by_key: dict[bytes, Caller] = {}
            by_name: dict[str, Caller] = {}
            for folder, admin in self._folders():
                for path in sorted(folder.glob("*.key")) if folder.is_dir() else ():
                    name = path.stem
                    if not NAME.match(name):
                        logger.warning("key %s ignored: a client's name (the file's stem) "
                                       "may hold only letters, digits, '_' and '-'", path)
                        continue
                    try:
                        public, _secret = load_certificate(str(path))
                    except (OSError, ValueError) as exc:
                        logger.warning("key %s ignored: it is not a public key file (%s)",
                                       path, exc)
                        continue
                    if public is None:
                        continue
                    if bytes(public) in by_key:  # one key, two names: the first one counts
                        logger.warning("key %s ignored: the same key is already %s's", path,
                                       by_key[bytes(public)].name)
                        continue
                    # a key is an admin's only when that key is in --admins (a name in both
                    # folders does not make the client key an admin's)
                    caller = Caller(name, admin, bytes(public).decode())
                    by_key[bytes(public)] = caller
                    by_name[name] = by_name.get(name) or caller
            changed = self._stamp is not None
            if set(self._by_key) - set(by_key):
                self.removals += 1  # a key went away: its subscriptions must go too
            self._stamp, self._by_key, self._by_name = stamp, by_key, by_name
        if changed:
            logger.info("client keys changed: %d client(s), %d admin(s) now",
                        sum(not c.admin for c in by_name.values()),
                        sum(c.admin for c in by_name.values()))

    def by_key(self, public_z85: bytes) -> Caller | None:
        """The caller with this public key (Z85), or None when it is not allowed now."""
        self._reload()
        with self._lock:
            return self._by_key.get(bytes(public_z85))

    def by_user_id(self, user_id: str) -> Caller | None:
        """The caller of a connection named ``NAME KEY`` by :meth:`user_id`, or None when
        that key is not allowed now, or now belongs to another name."""
        name, _, key = user_id.partition(" ")
        caller = self.by_key(key.encode()) if key else None
        return caller if caller is not None and caller.name == name else None

    def user_id(self, public_z85: bytes) -> str:
        """How a connection is named for its life: the name and the key it was opened
        with (so a key replaced under the same name stops its open connections)."""
        caller = self.by_key(public_z85)
        return f"{caller.name} {bytes(public_z85).decode()}" if caller is not None else ""

    def callers(self) -> list[Caller]:
        """Every allowed key's caller, as the folders hold them now."""
        self._reload()
        with self._lock:
            return list(self._by_key.values())

    def names(self) -> list[str]:
        """Every allowed name."""
        self._reload()
        with self._lock:
            return sorted(self._by_name)

    # -- the ZAP handler's interface (pyzmq's ``configure_curve_callback``) ----------------
    def callback(self, domain: str, key: bytes) -> bool:
        """Whether a client with public key ``key`` (Z85) may connect now."""
        return self.by_key(key) is not None


#: what a web token's key is derived for (a new purpose would get other tokens)
_TOKEN_PURPOSE = b"renderfarm status page token v1"


def web_token(server_secret: str, client_public: str) -> str:
    """A client's token for the status page: HMAC-SHA256 of its public key (Z85) under a key
    derived from the service's secret key. Nothing is stored: the service recomputes it from
    the keys it allows now, so a key removed from ``--clients`` stops its token at once.

    Args:
        server_secret: the service's secret key (Z85).
        client_public: the client's public key (Z85).

    Returns:
        64 hex digits.
    """
    derived = hmac.new(server_secret.encode(), _TOKEN_PURPOSE, hashlib.sha256).digest()
    return hmac.new(derived, client_public.encode(), hashlib.sha256).hexdigest()
