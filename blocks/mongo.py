"""How to reach a MongoDB deployment: plain connection settings and the `MongoEndpoint` block.

`MongoConnection` is a plain pydantic model (it crosses task boundaries); `MongoEndpoint` is the same
fields saved as a Prefect block, with the password kept as a secret, and owns its client
(`get_client`) as Prefect's own integration blocks do. Clients are opened from either with
`open_client`, never passed around.
"""
from __future__ import annotations

import hashlib
import threading
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from bson.raw_bson import RawBSONDocument
from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pymongo import MongoClient

DRIVER_NAME = "mongo-migrate"

# Every write mongo-migrate makes is acknowledged only once a majority of the deployment's members hold
# it (journaled, by the servers' default), whatever the URI or the deployment's default write concern
# says. The copy's and the sync's checkpoints move on past acknowledged writes only, so an acknowledged
# write must be one no failover rolls back: a 4.4 replica set's default, and an arbiter's since 5.0, is
# w:1, whose writes a failover can roll back after the checkpoint has passed them. A majority that does
# not answer within the timeout is a write concern error, and the write is made again (tasks/copy.py,
# tasks/sync/engine.py). A standalone acknowledges majority as it does w:1.
WRITE_CONCERN = {"w": "majority", "wTimeoutMS": 60_000}


def split_uri_password(uri: str) -> tuple[str, str | None, str | None]:
    """Return (uri without credentials, username, password) for a mongodb:// or mongodb+srv:// URI."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, hosts, parts.path, parts.query, parts.fragment))
    return clean, unquote(user) or None, (unquote(password) if sep else None)


def unescaped_credentials(uri: str) -> bool:
    """A user name or password with an unescaped / ? or #: the '@' after it is no longer in the host
    part, where URI parsers look for credentials, so the password would stay in the URI."""
    rest = uri.partition("://")[2]
    if "@" not in rest or "@" in urlsplit(uri).netloc:
        return False
    before_at = rest.rpartition("@")[0]
    # an '@' inside an option value (?appName=a@b) is not one of these
    return "?" not in before_at or "=" not in before_at.partition("?")[2]


def redact_uri(uri: str) -> str:
    """The URI as it may be shown: any password replaced by ****."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if unescaped_credentials(uri):
        scheme, _, rest = uri.partition("://")
        return f"{scheme}://****@{rest.rpartition('@')[2]}"
    if "@" not in parts.netloc:
        return uri
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit((parts.scheme, f"{user}:****@{hosts}", parts.path, parts.query, parts.fragment))


class MongoConnection(BaseModel):
    """Everything needed to open a client on one deployment."""

    # a validation error never repeats its input: the input may hold a password
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    uri: str | None = Field(
        None,
        title="Connection URI",
        description="mongodb:// or mongodb+srv:// URI. A password written in it is moved to the "
        "password field so it is never shown or stored with the URI.",
        examples=["mongodb://db1.example.com:27017/?replicaSet=rs0"],
    )
    username: str | None = Field(
        None, title="Username", description="User to authenticate as (or written in the URI)."
    )
    password: SecretStr | None = Field(
        None, title="Password",
        description="Kept secret. Prefer a MongoEndpoint block or password_env over typing it in a run form.",
    )
    auth_source: str | None = Field(
        None, title="Authentication database",
        description="Database holding the user (authSource); None: as the URI says, else admin.",
        examples=["admin"],
    )
    tls: bool | None = Field(None, title="Use TLS", description="None: as the URI says (on for mongodb+srv).")
    tls_ca_file: str | None = Field(None, title="TLS CA file", description="Path to a PEM CA bundle.")
    tls_certificate_key_file: str | None = Field(
        None, title="TLS client certificate", description="Path to a PEM file with certificate and key."
    )
    tls_allow_invalid_hostnames: bool = Field(
        False, title="Allow TLS host name mismatch",
        description="Accept a server certificate whose name differs from the host (testing only).",
    )
    timeout_s: float = Field(
        10.0, gt=0, le=600, title="Connect timeout (s)",
        description="How long to wait for the server to answer before giving up.",
    )

    @model_validator(mode="after")
    def _move_password_out_of_uri(self) -> "MongoConnection":
        if self.uri and unescaped_credentials(self.uri):
            raise ValueError("the user name or password in uri holds an unescaped '/', '?' or '#': "
                             "percent-escape it (urllib.parse.quote_plus) or give it in password")
        if self.uri and "@" in self.uri:
            clean, user, password = split_uri_password(self.uri)
            # assignment through __dict__ avoids re-running this validator
            self.__dict__["uri"] = clean
            if user and not self.username:
                self.__dict__["username"] = user
            if password is not None and self.password is None:
                self.__dict__["password"] = SecretStr(password)
        return self

    def display(self) -> str:
        """Where this points, safe to print."""
        if not self.uri:
            return "<no uri>"
        uri = redact_uri(self.uri)  # credentials still in the URI (unescaped, so not moved out)
        if self.username:
            parts = urlsplit(uri)
            return urlunsplit(
                (parts.scheme, f"{quote(self.username, safe='')}:****@{parts.netloc}", parts.path,
                 parts.query, parts.fragment)
            )
        return uri

    def client_kwargs(self) -> dict[str, Any]:
        ms = int(self.timeout_s * 1000)
        kwargs: dict[str, Any] = {
            "serverSelectionTimeoutMS": ms,
            "connectTimeoutMS": ms,
            "appname": DRIVER_NAME,
            **WRITE_CONCERN,
        }
        if self.username:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        if self.auth_source:
            kwargs["authSource"] = self.auth_source
        if self.tls is not None:
            kwargs["tls"] = self.tls
        if self.tls_ca_file:
            kwargs["tlsCAFile"] = self.tls_ca_file
        if self.tls_certificate_key_file:
            kwargs["tlsCertificateKeyFile"] = self.tls_certificate_key_file
        if self.tls_allow_invalid_hostnames:
            kwargs["tlsAllowInvalidHostnames"] = True
        return kwargs

    def cache_key(self) -> str:
        """Identifies the connection (secrets included, hashed) for the per-process client pool."""
        material = repr(sorted((k, str(v)) for k, v in self.client_kwargs().items())) + (self.uri or "")
        return hashlib.sha256(material.encode()).hexdigest()


class MongoEndpoint(Block, MongoConnection):
    """A MongoDB deployment to migrate from or to."""

    _block_type_name = "MongoEndpoint"
    _block_type_slug = "mongoendpoint"
    _description = "A MongoDB deployment: URI, credentials (password kept secret) and TLS options."
    _documentation_url = "https://www.mongodb.com/docs/manual/reference/connection-string/"  # type: ignore[assignment]
    _code_example = """
```python
from mongo_migrate.blocks.mongo import MongoEndpoint

endpoint = MongoEndpoint.load("BLOCK_NAME")
client = endpoint.get_client()  # pymongo's MongoClient, pooled per process
print(client.admin.command("ping"))
```
"""

    def connection(self) -> MongoConnection:
        return MongoConnection.model_validate(
            {name: getattr(self, name) for name in MongoConnection.model_fields}
        )

    def get_client(self, *, raw: bool = False) -> MongoClient:
        """The pooled client for this deployment (open_client): one per process and settings."""
        return open_client(self.connection(), raw=raw)


def server_hello(client: MongoClient) -> dict:
    """The server's `hello` reply; `isMaster` on servers before 4.4.2, which lack `hello` (its
    `ismaster` is copied to `isWritablePrimary`, so callers read one name)."""
    from pymongo.errors import OperationFailure

    try:
        return client.admin.command("hello")
    except OperationFailure as exc:
        if exc.code != 59:  # CommandNotFound
            raise
    reply = client.admin.command("isMaster")
    reply.setdefault("isWritablePrimary", reply.get("ismaster", False))
    return reply


_clients: dict[str, MongoClient] = {}
_clients_lock = threading.Lock()


def open_client(conn: MongoConnection, *, raw: bool = False) -> MongoClient:
    """A pooled client for this connection, shared by every task in this process.

    MongoClient is thread-safe and expensive to create, so tasks ask for it by settings instead of
    receiving one as an argument. `raw=True` gives a client whose every result (change events
    included, which have no per-call codec option) decodes as RawBSONDocument.
    """
    key = conn.cache_key() + (":raw" if raw else "")
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            # as tasks.common.RAW: dates outside years 1-9999 decode as DatetimeMS, not an error
            extra = {"document_class": RawBSONDocument, "datetime_conversion": "DATETIME_AUTO"} if raw else {}
            client = MongoClient(conn.uri, **conn.client_kwargs(), **extra)
            _clients[key] = client
        return client


def close_clients() -> None:
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()
