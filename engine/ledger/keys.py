"""Ed25519 signing keys for the ledger (pynacl).

Files in ``CARL_HOME/keys/`` (directory 0700, files 0600, each written atomically):

- ``ledger.key`` — the current signing key: its 32-byte Ed25519 seed as 64 hex characters and a newline.
- ``ledger.pub`` — every public key the ledger has used, one 64-hex-character line each, oldest first; the
  last line is the current key. Public keys are not secret; ``ledger export`` copies this file.

A block's ``signer`` is the signing key's public key in hex (64 characters), so a verifier needs nothing but
public keys. ``key_id`` (the first 16 hex characters) is only for display.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from nacl import bindings

from engine.errors import CredentialError, PermissionDenied
from engine.home import CarlHome

KEY_FILE = "ledger.key"
PUB_FILE = "ledger.pub"


@dataclass(frozen=True)
class Signer:
    """A signing key: ``public`` (hex) is the block's ``signer``; ``sign`` signs bytes (64-byte signature)."""

    seed: bytes
    public_bytes: bytes
    secret: bytes  # libsodium's 64-byte secret key (seed || public)

    @property
    def public(self) -> str:
        return self.public_bytes.hex()

    def sign(self, message: bytes) -> bytes:
        return bindings.crypto_sign(message, self.secret)[: bindings.crypto_sign_BYTES]

    def __repr__(self) -> str:  # never show the seed
        return f"Signer(public={self.public[:16]}…)"


def signer_from_seed(seed: bytes | str) -> Signer:
    """A signer from a 32-byte seed; any other bytes/str (tests: ``"alice"``) are hashed to 32 bytes first."""
    raw = seed.encode("utf-8") if isinstance(seed, str) else bytes(seed)
    if len(raw) != 32:
        raw = hashlib.sha256(raw).digest()
    pk, sk = bindings.crypto_sign_seed_keypair(raw)
    return Signer(seed=raw, public_bytes=pk, secret=sk)


def new_signer() -> Signer:
    return signer_from_seed(os.urandom(32))


def key_id(public_hex: str) -> str:
    return public_hex[:16]


def verify_signature(public_hex: str, message: bytes, signature_hex: str) -> bool:
    """True when ``signature_hex`` is a valid Ed25519 signature of ``message`` by ``public_hex``."""
    try:
        pk = bytes.fromhex(public_hex)
        sig = bytes.fromhex(signature_hex)
        if len(pk) != 32 or len(sig) != 64:
            return False
        bindings.crypto_sign_open(sig + message, pk)
        return True
    except Exception:
        return False


def _paths(home: CarlHome) -> tuple[Path, Path]:
    return home.keys / KEY_FILE, home.keys / PUB_FILE


def _write_atomic(path: Path, data: bytes, *, mode: int, exclusive: bool) -> bool:
    """Write ``data`` to a temp file (mode ``mode``), fsync, then move it into place. With ``exclusive`` an
    existing file wins (returns False). The directory is fsynced."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        else:
            os.replace(tmp, path)
            tmp = None  # type: ignore[assignment]
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


def _missing(home: CarlHome, what: str, detail: str = "") -> CredentialError:
    key_path, _ = _paths(home)
    return CredentialError(f"ledger signing key {what}: {key_path}{detail}",
                           hint="Run `carl --batch ledger init` to create a key, or restore keys/ from a backup.",
                           context={"key_path": str(key_path)})


def has_key(home: CarlHome) -> bool:
    return _paths(home)[0].is_file()


def load_signer(home: CarlHome) -> Signer:
    """The current signing key. ``carl.credential`` when it is missing, unreadable or malformed."""
    key_path, _ = _paths(home)
    try:
        text = key_path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise _missing(home, "is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _missing(home, "is unreadable", f" ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise _missing(home, "is malformed", " (expected 64 hex characters)")
    return signer_from_seed(seed)


def public_keys(home: CarlHome) -> list[str]:
    """Every public key this CARL_HOME's ledger has used (oldest first). Empty when none is stored."""
    _, pub_path = _paths(home)
    try:
        text = pub_path.read_text(encoding="ascii")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialError(f"ledger public keys are unreadable: {pub_path}",
                              hint="Check the permissions of CARL_HOME/keys/.",
                              context={"key_path": str(pub_path), "reason": type(exc).__name__}) from None
    return read_public_keys_text(text)


def read_public_keys_text(text: str) -> list[str]:
    keys = []
    for line in text.splitlines():
        line = line.strip().lower()
        if not line or line.startswith("#"):
            continue
        if len(line) == 64 and all(c in "0123456789abcdef" for c in line):
            keys.append(line)
    return keys


def _ensure_dir(home: CarlHome) -> None:
    try:
        home.keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(home.keys, 0o700)
    except OSError as exc:
        raise PermissionDenied(f"cannot create {home.keys}: {exc.strerror}",
                               hint="Set CARL_HOME to a writable directory.",
                               context={"carl_home": str(home.root)}) from None


def _append_public(home: CarlHome, public_hex: str) -> None:
    _, pub_path = _paths(home)
    keys = public_keys(home)
    if public_hex in keys and keys[-1] == public_hex:
        return
    keys = [k for k in keys if k != public_hex] + [public_hex]
    _write_atomic(pub_path, ("\n".join(keys) + "\n").encode("ascii"), mode=0o600, exclusive=False)


def ensure_signer(home: CarlHome, seed: bytes | str | None = None) -> tuple[Signer, bool]:
    """Load the signing key, creating it (atomically, first writer wins) when absent. Returns (signer, created)."""
    if has_key(home):
        signer = load_signer(home)
        if signer.public not in public_keys(home):
            _append_public(home, signer.public)
        return signer, False
    _ensure_dir(home)
    signer = signer_from_seed(seed) if seed is not None else new_signer()
    key_path, _ = _paths(home)
    created = _write_atomic(key_path, (signer.seed.hex() + "\n").encode("ascii"), mode=0o600, exclusive=True)
    if not created:  # another process made one first: use theirs
        signer = load_signer(home)
    _append_public(home, signer.public)
    return signer, created


def install_signer(home: CarlHome, signer: Signer) -> None:
    """Make ``signer`` the current key (used by rotation, under the ledger lock): replace ledger.key
    atomically and append its public key to ledger.pub."""
    _ensure_dir(home)
    _append_public(home, signer.public)
    key_path, _ = _paths(home)
    _write_atomic(key_path, (signer.seed.hex() + "\n").encode("ascii"), mode=0o600, exclusive=False)
