"""Transport security: message signing (Celery's ``auth`` serializer) and TLS for ``rediss://``.

Defaults that need nothing from the operator live in :mod:`buddy.infra.transport`: JSON only
(a pickle message is refused by every worker) and the Redis password from the URL.
This module adds what needs keys:

- :func:`configure_signing` — every task and event message is signed with the sender's RSA
  private key and verified by the receiver against a store of trusted X.509 certificates
  (Celery's ``auth`` serializer: ``task_serializer='auth'``, ``accept_content=['auth']``).
  An unsigned, badly signed or pickled message is refused. Every process that sends tasks
  (the coordinator, workers — they send chord bodies and retries) needs the private key;
  every process that reads messages (workers, Flower) needs the certificate store.
  ``BUDDY_SIGNING_KEY`` names a PEM file (or holds PEM text) with the private key, and the
  certificate too when ``BUDDY_SIGNING_CERT`` is not set; ``BUDDY_SIGNING_CERT_STORE`` is a
  file or directory of trusted certificates (default: the certificate itself).
  What it does not cover: results in the result backend (JSON, unsigned), Buddy's own state
  keys in Redis (outcomes, claims, approvals, leases — anyone with the Redis password can
  write them), and confidentiality (messages are signed, not encrypted: use ``rediss://``).
  See docs/operations.md.
- :func:`tls_settings` — for a ``rediss://`` URL, Celery's ``broker_use_ssl`` and
  ``redis_backend_use_ssl`` with certificate checks on (``CERT_REQUIRED``) unless the URL's
  ``ssl_cert_reqs`` says otherwise; ``ssl_ca_certs``, ``ssl_certfile`` and ``ssl_keyfile`` in
  the URL's query are passed on. Without it kombu connects to a ``rediss://`` broker with
  *no* certificate check and Celery's result backend refuses the URL.
"""

from __future__ import annotations

import os
import ssl
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery

from buddy.config import Settings
from buddy.errors import ConfigError

#: Serializers a signing app still decodes: ``json`` for results, ``auth`` for messages.
SIGNED_ACCEPT = ["auth"]

_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "cert_required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "cert_optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
    "cert_none": ssl.CERT_NONE,
}


@dataclass(frozen=True)
class SigningFiles:
    """Paths Celery's ``security_*`` settings take: the key, the certificate, the trusted store."""

    key: str
    cert: str
    cert_store: str


def _pem_path(value: str, what: str, directory: Path | None) -> str:
    """``value`` as a file path: itself when it names a file, else PEM text written to a 0600 file."""
    if value.lstrip().startswith("-----BEGIN"):
        d = directory or Path(tempfile.mkdtemp(prefix="buddy-signing-"))
        os.chmod(d, stat.S_IRWXU)
        path = d / f"{what}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(value.strip() + "\n")
        return str(path)
    path = Path(value).expanduser()
    if not path.exists():
        raise ConfigError(f"signing {what}: {value!r} is neither a file nor PEM text")
    return str(path)


def signing_files(
    key: str, cert: str | None = None, cert_store: str | None = None, *, directory: Path | None = None
) -> SigningFiles:
    """Resolve the signing material: ``key`` (path or PEM text, may hold the certificate too),
    ``cert`` (default: ``key``'s file), ``cert_store`` (default: the certificate's file).

    Raises :class:`ConfigError` when a path does not exist or the key file has no certificate
    and none was given.
    """
    key_path = _pem_path(key, "key", directory)
    if cert is None:
        text = Path(key_path).read_text(encoding="utf-8", errors="replace")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ConfigError(
                "BUDDY_SIGNING_KEY holds no certificate: append the X.509 certificate to the key's "
                "PEM file or set BUDDY_SIGNING_CERT"
            )
        cert_path = key_path
    else:
        cert_path = _pem_path(cert, "cert", directory or Path(key_path).parent)
    store = _pem_path(cert_store, "cert_store", directory) if cert_store else cert_path
    return SigningFiles(key=key_path, cert=cert_path, cert_store=store)


def configure_signing(
    app: Celery,
    key_pem_path_or_secret: str,
    *,
    cert: str | None = None,
    cert_store: str | None = None,
    digest: str = "sha256",
) -> SigningFiles:
    """Sign and verify every task and event message of ``app`` (Celery's ``auth`` serializer).

    ``key_pem_path_or_secret`` is a PEM file path, or the PEM text itself, of an RSA private
    key (and, unless ``cert`` is given, its X.509 certificate). Celery registers the
    serializer process-wide (``app.setup_security``) and disables every other decoder but
    JSON, which results still use. Returns the files used. Raises :class:`ConfigError` for
    missing material and Celery's ``SecurityError`` / ``ImproperlyConfigured`` for a key or
    certificate it cannot use (e.g. an expired certificate).
    """
    files = signing_files(key_pem_path_or_secret, cert, cert_store)
    app.conf.update(
        security_key=files.key,
        security_certificate=files.cert,
        security_cert_store=files.cert_store,
        security_digest=digest,
        task_serializer="auth",
        event_serializer="auth",
        accept_content=list(SIGNED_ACCEPT),
        result_serializer="json",
        result_accept_content=["json"],
    )
    app.setup_security(allowed_serializers=["json"], digest=digest, serializer="json")
    return files


def signing_enabled(app: Celery) -> bool:
    """True when ``app`` signs its messages (``task_serializer`` is ``auth``)."""
    return str(app.conf.task_serializer) == "auth"


def tls_settings(url: str) -> dict[str, Any]:
    """Celery settings for a ``rediss://`` ``url`` (empty for any other scheme).

    ``broker_use_ssl`` and ``redis_backend_use_ssl`` get ``ssl_cert_reqs`` (``CERT_REQUIRED``
    unless the URL's query sets ``ssl_cert_reqs=optional|none``) and the ``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile`` the query names. Raises :class:`ConfigError` for an
    unknown ``ssl_cert_reqs``.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return {}
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    raw = query.get("ssl_cert_reqs", "required")
    reqs = _CERT_REQS.get(raw.lower())
    if reqs is None:
        raise ConfigError(f"rediss:// URL: ssl_cert_reqs={raw!r}; use required, optional or none")
    opts: dict[str, Any] = {"ssl_cert_reqs": reqs}
    for k in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if query.get(k):
            opts[k] = query[k]
    return {"broker_use_ssl": dict(opts), "redis_backend_use_ssl": dict(opts)}


def apply_security(app: Celery, url: str, settings: Settings) -> None:
    """TLS settings for ``url`` and, when ``BUDDY_SIGNING_KEY`` is set, message signing.

    The hook :func:`buddy.infra.transport.make_celery` calls; reads the optional settings
    ``signing_key``, ``signing_cert`` and ``signing_cert_store``.
    """
    tls = tls_settings(url)
    if tls:
        app.conf.update(**tls)
    key = getattr(settings, "signing_key", None)
    if key:
        configure_signing(
            app,
            key,
            cert=getattr(settings, "signing_cert", None) or None,
            cert_store=getattr(settings, "signing_cert_store", None) or None,
        )
