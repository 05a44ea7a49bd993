"""ZeroMQ sockets of the farm service and its clients, with CurveZMQ authentication.

The service binds a ROUTER socket for requests and a PUB socket for events (on the next
port by default). With keys, both are CURVE servers and a ZAP handler accepts only clients
whose public key file lies in the allowed-clients folder. Without keys the service binds only
to loopback, and only when asked to (``--insecure-loopback``).

Keys are the Z85 text ZeroMQ uses (40 characters); :func:`create_keys` writes a pair as
``NAME.key`` (public, give it to the other side) and ``NAME.key_secret`` (keep it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from renderfarm.errors import InputError

logger = logging.getLogger(__name__)

_Z85 = re.compile(r"^[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass(frozen=True)
class KeyPair:
    """A CurveZMQ key pair as Z85 text (``secret`` may be empty for a public key alone)."""

    public: str
    secret: str = ""


def new_keys() -> KeyPair:
    """A fresh key pair."""
    import zmq

    public, secret = zmq.curve_keypair()
    return KeyPair(public.decode(), secret.decode())


def create_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """Write a new key pair as ``folder/NAME.key`` and ``folder/NAME.key_secret``.

    Raises:
        InputError: the files exist already (keys are never overwritten) or the folder
            cannot be written.
    """
    import zmq.auth

    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise InputError("a key with this name exists; keys are never overwritten: "
                             "choose another --name or remove it", path=str(path))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        zmq.auth.create_certificates(str(folder), name)
    except OSError as exc:
        raise InputError(f"cannot write keys ({exc.strerror})", path=str(folder)) from exc
    secret.chmod(0o600)
    return public, secret


def read_key(text_or_path: str, secret: bool = False) -> KeyPair:
    """A key given as Z85 text or as a key file written by :func:`create_keys`.

    Args:
        text_or_path: 40 characters of Z85, or a ``.key``/``.key_secret`` file.
        secret: the secret key is needed (a ``.key_secret`` file).

    Raises:
        InputError: neither valid Z85 nor a readable key file (of the right kind).
    """
    text = text_or_path.strip()
    if _Z85.match(text) and not secret:
        return KeyPair(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise InputError("not a key: give 40 characters of Z85 or a key file made by "
                         "`renderfarm keys`", path=text)
    import zmq.auth

    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read the key file ({exc})", path=str(path)) from exc
    if secret and not secret_key:
        raise InputError("this is a public key; the secret key file (.key_secret) is needed",
                         path=str(path))
    return KeyPair(public.decode(), (secret_key or b"").decode())


def publish_address(bind: str, publish: str | None = None) -> str:
    """The PUB socket's address: ``publish``, or the request port + 1 (``*`` stays ``*``)."""
    if publish:
        return publish
    base, _, port = bind.rpartition(":")
    if not bind.startswith("tcp://") or not (port.isdigit() or port == "*"):
        raise InputError(f"cannot derive an events address from {bind!r}; give --publish")
    return f"{base}:{'*' if port == '*' else int(port) + 1}"


def is_loopback(address: str) -> bool:
    """Whether a bind address reaches only this machine."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    host = urlsplit(address).hostname or ""
    return host in _LOOPBACK or host.startswith("127.")


@dataclass
class ServerSockets:
    """The service's bound sockets.

    Attributes:
        router: requests in, replies out.
        pub: events out (an XPUB in manual mode: the service decides which subscriptions
            it honours, so a client receives only its own jobs' events).
        endpoint: the ROUTER's bound address (the port resolved).
        publish: the PUB's bound address.
        authenticator: the ZAP handler (None without keys).
        keyring: the allowed clients and admins (None without keys).
    """

    context: Any
    router: Any
    pub: Any
    endpoint: str
    publish: str
    authenticator: Any = None
    keyring: Any = None
    server_key: Any = None
    max_message: int = 0

    def rebind_events(self) -> None:
        """Close the event socket and bind a new one on the same address: every subscriber
        reconnects (ZeroMQ does it by itself) and subscribes again, through a new handshake
        and the service's checks; one whose key was removed gets nothing more."""
        import time

        import zmq

        self.pub.close(linger=0)
        pub = event_socket(self.context, self.server_key, self.max_message)
        deadline = time.monotonic() + 5
        while True:
            try:
                pub.bind(self.publish)
                break
            except zmq.ZMQError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.pub = pub

    def close(self) -> None:
        """Close the sockets and stop authentication."""
        self.router.close(linger=0)
        self.pub.close(linger=0)
        if self.authenticator is not None:
            self.authenticator.stop()


def _named_authenticator(context: Any, keyring: Any) -> Any:
    """A ZAP handler that accepts the keyring's keys (read again as they change) and names
    each connection by its key file (the ``User-Id`` of every message it sends)."""
    from zmq.auth.thread import ThreadAuthenticator
    from zmq.utils import z85

    class NamedAuthenticator(ThreadAuthenticator):
        def curve_user_id(self, client_public_key: bytes) -> str:
            return keyring.user_id(z85.encode(client_public_key))

    authenticator = NamedAuthenticator(context, log=logging.getLogger(__name__ + ".zap"))
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=keyring)
    return authenticator


def bind_server(bind: str, publish: str | None, server_key: KeyPair | None,
                clients: Path | None, insecure_loopback: bool,
                max_message: int, admins: Path | None = None) -> ServerSockets:
    """Bind the service's sockets.

    Args:
        bind: the ROUTER address (``tcp://0.0.0.0:5555``).
        publish: the PUB address (default: port + 1).
        server_key: the service's key pair; None runs without CURVE.
        clients: the folder of allowed clients' public keys (``*.key``); each is named by
            its file (``alice.key`` is the client ``alice``).
        admins: the folder of admins' public keys (they see and act on every job).
        insecure_loopback: allow running without keys (loopback addresses only).
        max_message: messages bigger than twice this are dropped by ZeroMQ itself (the
            service refuses anything above it with an error reply).

    Raises:
        InputError: keys missing without ``insecure_loopback``, or a non-loopback address
            without keys, or the address is in use.
    """
    import zmq

    pub_address = publish_address(bind, publish)
    if server_key is None:
        if not insecure_loopback:
            raise InputError("the farm service needs keys: give --server-key and --clients "
                             "(make them with `renderfarm keys`), or --insecure-loopback "
                             "to serve this machine only without them")
        for address in (bind, pub_address):
            if not is_loopback(address):
                raise InputError(f"{address} is not a loopback address; without keys the "
                                 "service serves only 127.0.0.1: give --server-key and "
                                 "--clients to serve the network")
    elif clients is None or not clients.is_dir():
        raise InputError("--clients must be a folder of the allowed clients' public keys "
                         "(*.key)", path=str(clients) if clients else None)
    if server_key is not None and not server_key.secret:
        raise InputError("--server-key must be the service's secret key file (.key_secret)")
    if admins is not None and (server_key is None or not admins.is_dir()):
        raise InputError("--admins must be a folder of admins' public keys (*.key), with "
                         "--server-key and --clients", path=str(admins))
    context = zmq.Context.instance()
    authenticator = keyring = None
    if server_key is not None:
        from renderfarm.server.keyring import KeyRing

        assert clients is not None
        keyring = KeyRing(clients, admins)
        authenticator = _named_authenticator(context, keyring)
        allowed = keyring.names()
        logger.info("accepting %d client key(s): %s", len(allowed), ", ".join(allowed))
    router = context.socket(zmq.ROUTER)
    _secure_server(router, server_key, max_message)
    router.setsockopt(zmq.ROUTER_HANDOVER, 1)
    pub = event_socket(context, server_key, max_message)
    try:
        router.bind(bind)
        pub.bind(pub_address)
    except zmq.ZMQError as exc:
        router.close(0)
        pub.close(0)
        if authenticator is not None:
            authenticator.stop()
        raise InputError(f"cannot listen on {bind} / {pub_address} ({exc}); is another "
                         "service running there? choose another --bind") from exc
    return ServerSockets(context, router, pub,
                         router.getsockopt(zmq.LAST_ENDPOINT).decode(),
                         pub.getsockopt(zmq.LAST_ENDPOINT).decode(), authenticator, keyring,
                         server_key, max_message)


def _secure_server(sock: Any, server_key: KeyPair | None, max_message: int) -> None:
    import zmq

    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_message)
    if server_key is not None:
        assert server_key.secret is not None
        sock.curve_secretkey = server_key.secret.encode()
        sock.curve_publickey = server_key.public.encode()
        sock.curve_server = True


def event_socket(context: Any, server_key: KeyPair | None, max_message: int) -> Any:
    """The service's event socket: an XPUB in manual mode (the service honours only each
    caller's own topics), CURVE when there are keys."""
    import zmq

    pub = context.socket(zmq.XPUB)
    pub.setsockopt(zmq.XPUB_MANUAL, 1)
    _secure_server(pub, server_key, max_message)
    pub.setsockopt(zmq.SNDHWM, 10_000)
    return pub


def secure_client(sock: Any, server_key: str | None, client_key: KeyPair | None) -> None:
    """Make ``sock`` a CURVE client of a server with public key ``server_key``.

    Raises:
        InputError: a server key without a client key pair, or the other way round.
    """
    if server_key is None and client_key is None:
        return
    if server_key is None or client_key is None or not client_key.secret:
        raise InputError("to reach a farm with keys, give both the server's public key and "
                         "this client's key pair (`renderfarm keys` makes one)")
    sock.curve_serverkey = server_key.encode()
    sock.curve_publickey = client_key.public.encode()
    sock.curve_secretkey = client_key.secret.encode()
