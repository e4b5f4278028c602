"""Endpoint checks, CURVE keys and socket limits for every tandem link.

Rules enforced here, before any socket binds or connects:

- a ``tcp://`` endpoint whose host is not loopback (127.0.0.0/8, ::1, localhost) needs CURVE keys;
  ``ipc://`` and ``inproc://`` are local and always allowed;
- every socket gets ``zmq.MAXMSGSIZE`` (the largest single frame it accepts) and ``LINGER``.

Keys live in a directory made by ``tandem keys DIR`` (:func:`create_keys`) in ZeroMQ's certificate
format: ``server.key`` / ``server.key_secret`` for the learner, ``client.key`` / ``client.key_secret``
for robots, and ``authorized/`` holding the public certificates of robots the learner accepts.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from tandem.core.errors import ConfigError

SERVER = "server"
CLIENT = "client"
AUTHORIZED_DIR = "authorized"


class LinkSecurityError(ConfigError):
    """An endpoint or key setup that tandem refuses to open. The message says what to do."""

    def __init__(self, message: str, field: str = "link", value: object = None) -> None:
        Exception.__init__(self, message)
        self.field, self.value, self.allowed = field, value, message


def endpoint_host(endpoint: str) -> str | None:
    """The host of a ``tcp://host:port`` endpoint (brackets stripped), or None for ipc/inproc.

    Raises:
        LinkSecurityError: unknown transport or a malformed tcp endpoint.
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        return None
    if not endpoint.startswith("tcp://"):
        raise LinkSecurityError(f"endpoint {endpoint!r}: use tcp://host:port, ipc://path or inproc://name")
    rest = endpoint[len("tcp://") :]
    if ";" in rest:  # tcp://source;dest: the destination is what counts
        rest = rest.split(";", 1)[1]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port:
        raise LinkSecurityError(f"endpoint {endpoint!r}: expected tcp://host:port")
    return host.strip("[]")


def is_loopback(endpoint: str) -> bool:
    """True for ipc/inproc endpoints and tcp endpoints on 127.0.0.0/8, ::1 or ``localhost``.

    Wildcards (``*``, ``0.0.0.0``, ``::``) and every other name or address count as non-loopback; no
    name is resolved.
    """
    host = endpoint_host(endpoint)
    if host is None or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class CurveKeys:
    """CURVE material for one side of a link (z85 bytes).

    Attributes:
        public, secret: this side's key pair.
        server_public: the learner's public key (robots need it; equal to ``public`` on the learner).
        authorized_dir: learner only: directory of robot public certificates it accepts.
    """

    public: bytes
    secret: bytes
    server_public: bytes
    authorized_dir: str = ""


def _write_cert(path: Path, public: bytes, secret: bytes | None) -> None:
    """A ZeroMQ certificate file (readable by ``zmq.auth.load_certificate``); secrets are 0600."""
    lines = [
        f"#   tandem CURVE {'secret' if secret else 'public'} certificate, {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    tmp.replace(path)


def create_keys(directory: str | Path, overwrite: bool = False) -> dict[str, str]:
    """Create a learner key pair, a robot key pair and ``authorized/`` (holding the robot's public cert).

    Returns:
        name -> path of each file written.

    Raises:
        LinkSecurityError: keys already exist and ``overwrite`` is false.
    """
    if not zmq.has("curve"):
        raise LinkSecurityError("this libzmq has no CURVE support; install pyzmq's bundled libzmq")
    root = Path(directory)
    if (root / f"{SERVER}.key_secret").exists() and not overwrite:
        raise LinkSecurityError(f"{root} already holds keys; pass overwrite=True (--force) to replace them")
    (root / AUTHORIZED_DIR).mkdir(parents=True, exist_ok=True)
    written = {}
    for name in (SERVER, CLIENT):
        public, secret = zmq.curve_keypair()
        _write_cert(root / f"{name}.key", public, None)
        _write_cert(root / f"{name}.key_secret", public, secret)
        written[f"{name}.key"] = str(root / f"{name}.key")
        written[f"{name}.key_secret"] = str(root / f"{name}.key_secret")
        if name == CLIENT:
            _write_cert(root / AUTHORIZED_DIR / f"{CLIENT}.key", public, None)
            written["authorized/client.key"] = str(root / AUTHORIZED_DIR / f"{CLIENT}.key")
    return written


def _load(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    from zmq.auth import load_certificate

    if not path.exists():
        raise LinkSecurityError(f"missing key file {path}; create keys with `tandem keys {path.parent}`")
    if need_secret and os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LinkSecurityError(f"{path} is readable by others; run `chmod 600 {path}`")
    public, secret = load_certificate(path)
    if need_secret and not secret:
        raise LinkSecurityError(f"{path} holds no secret key")
    return public, secret


def load_keys(directory: str | Path, side: str) -> CurveKeys:
    """The CURVE keys of ``side`` ("server" for the learner, "client" for a robot) from ``directory``."""
    root = Path(directory)
    if side == SERVER:
        public, secret = _load(root / f"{SERVER}.key_secret", True)
        return CurveKeys(public, secret, public, str(root / AUTHORIZED_DIR))
    if side == CLIENT:
        public, secret = _load(root / f"{CLIENT}.key_secret", True)
        server_public, _ = _load(root / f"{SERVER}.key", False)
        return CurveKeys(public, secret, server_public)
    raise ValueError(f"side={side!r}: one of 'server', 'client'")


def check_endpoint(endpoint: str, keys_dir: str, field: str = "endpoint") -> None:
    """Refuse a non-loopback endpoint without CURVE keys. Call before creating or binding a socket.

    Raises:
        LinkSecurityError: naming the field, the endpoint and the fix.
    """
    if is_loopback(endpoint):
        return
    if not keys_dir:
        raise LinkSecurityError(
            f"{field}={endpoint!r} is not a loopback address: tandem only opens non-loopback links with CURVE "
            f"encryption. Create keys with `tandem keys DIR` and set keys_dir=DIR on both sides, or use 127.0.0.1"
        )
    if not Path(keys_dir, f"{SERVER}.key").exists():
        raise LinkSecurityError(f"{field}={endpoint!r}: keys_dir={keys_dir!r} holds no keys; run `tandem keys {keys_dir}`")


def start_authenticator(context: zmq.Context, keys: CurveKeys) -> Any:
    """Start a ZAP authenticator on ``context`` that accepts only robots in ``keys.authorized_dir``."""
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context)
    auth.start()
    try:
        auth.configure_curve(domain="*", location=keys.authorized_dir)
    except BaseException:
        auth.stop()  # its thread and sockets would keep the context from terminating
        raise
    return auth


def open_socket(
    context: zmq.Context,
    kind: int,
    endpoint: str,
    *,
    bind: bool,
    max_message_bytes: int,
    keys_dir: str = "",
    field: str = "endpoint",
    options: dict[int, Any] | None = None,
) -> zmq.Socket:
    """A socket with size limit, linger and (when ``keys_dir`` is set) CURVE, bound or connected.

    The endpoint is checked first (:func:`check_endpoint`), so a refused endpoint never creates or
    binds a socket. A binding side is the CURVE server ("server" keys), a connecting side the client.
    """
    check_endpoint(endpoint, keys_dir, field)
    keys = load_keys(keys_dir, SERVER if bind else CLIENT) if keys_dir else None
    sock = context.socket(kind)
    try:
        sock.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
        sock.setsockopt(zmq.LINGER, 0)
        for opt, value in (options or {}).items():
            sock.setsockopt(opt, value)
        if keys is not None:
            if bind:
                sock.curve_server = True
                sock.curve_secretkey = keys.secret
                sock.curve_publickey = keys.public
            else:
                sock.curve_serverkey = keys.server_public
                sock.curve_secretkey = keys.secret
                sock.curve_publickey = keys.public
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except Exception:
        sock.close(0)
        raise
    return sock


def bound_endpoint(sock: zmq.Socket) -> str:
    """The endpoint a socket actually bound (resolves port 0 / ``*`` to the real port)."""
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def tcp_endpoint(host: str, port: int) -> str:
    """``tcp://host:port``; port 0 means "any free port" (binding side only)."""
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"tcp://{host}:{port if port else '*'}"
