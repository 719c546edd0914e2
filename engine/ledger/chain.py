"""The hash chain: append-only JSONL segments in ``CARL_HOME/ledger/``, appended under a cross-process lock.

A block (one canonical-JSON line, see :mod:`engine.ledger.canonical`)::

    {"action", "hash", "index", "payload", "payload_hash", "prev_hash", "signature", "signer", "ts"}

- ``index``: 0 for the genesis block, then +1 per block, continuous across segment files.
- ``ts``: UTC time, ``YYYY-MM-DDTHH:MM:SS.mmmZ``.
- ``prev_hash``: the previous block's ``hash`` (64 zeros for the genesis block).
- ``payload``: a JSON object, passed through ``engine.errors.redact`` and normalised before hashing.
- ``payload_hash`` = sha256(canonical(payload)), hex.
- ``hash`` = sha256(canonical(block without ``hash`` and ``signature``)), hex.
- ``signer``: the signing key's Ed25519 public key, hex (64 characters).
- ``signature``: Ed25519 signature of the 64 ASCII bytes of ``hash``, hex (128 characters).

Segments are ``segment-000000.jsonl``, ``segment-000001.jsonl`` …; a new one starts when the current one
reaches the size cap. Appends take an exclusive ``fcntl.flock`` on ``ledger/.lock`` (timeout →
``carl.ledger.locked``), re-read the tail hash under the lock, write, and ``fsync`` before returning.

A torn tail (an append killed mid-write: the last segment does not end with a newline) blocks every append with
``carl.ledger.broken_chain`` naming ``carl --batch ledger repair``. :meth:`Ledger.repair` checks that everything
before the torn bytes verifies, moves those bytes byte for byte into ``ledger/quarantine/`` (0600), truncates the
segment to its last complete line, and appends a signed ``ledger.recovered`` block with the torn bytes' segment,
offset, size and sha256. Anything else broken (an edited, removed or reordered block) is refused, and still fails
``verify``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import orjson
from nacl import bindings

from engine.errors import (CredentialError, LedgerBrokenChain, LedgerLocked, ValidationError, redact)
from engine.home import CarlHome
from engine.ledger import keys as _keys
from engine.ledger.canonical import canonical, fast_ok, normalise, sha256_hex

GENESIS_PREV = "0" * 64
BLOCK_FIELDS = ("index", "ts", "prev_hash", "action", "payload", "payload_hash", "hash", "signer", "signature")
BODY_FIELDS = ("index", "ts", "prev_hash", "action", "payload", "payload_hash", "signer")
_FIELDSET = frozenset(BLOCK_FIELDS)
GENESIS_ACTION = "ledger.genesis"
ROTATE_ACTION = "key.rotate"
RECOVERED_ACTION = "ledger.recovered"
RESERVED_ACTIONS = frozenset({GENESIS_ACTION, ROTATE_ACTION, RECOVERED_ACTION})
QUARANTINE_DIR = "quarantine"
REPAIR_HINT = ("Run `carl --batch ledger repair`: it moves the torn tail (kept byte for byte) into "
               "ledger/quarantine/ and records a signed ledger.recovered block.")
ACTION_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
SEGMENT_RE = re.compile(r"^segment-(\d{6,})\.jsonl$")
DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024
DEFAULT_LOCK_TIMEOUT = 10.0
MAX_PAYLOAD_BYTES = 1024 * 1024
TS_FORMAT = "%Y-%m-%dT%H:%M:%S"

# The clock blocks are stamped with when no ``ts`` is given (tests replace it with a frozen one).
clock: Callable[[], float] = time.time


def format_ts(t: float | str | datetime | None = None) -> str:
    """A block timestamp: ``2025-01-02T03:04:05.678Z`` (UTC, milliseconds)."""
    if t is None:
        t = clock()
    if isinstance(t, str):
        return t
    if isinstance(t, datetime):
        dt = t.astimezone(timezone.utc) if t.tzinfo else t.replace(tzinfo=timezone.utc)
    else:
        dt = datetime.fromtimestamp(float(t), timezone.utc)
    return dt.strftime(TS_FORMAT) + f".{dt.microsecond // 1000:03d}Z"


def make_block(index: int, ts: str, prev_hash: str, action: str, payload: dict[str, Any],
               signer: _keys.Signer) -> dict[str, Any]:
    """Build and sign a block over an already redacted + normalised payload."""
    body = {"index": index, "ts": ts, "prev_hash": prev_hash, "action": action, "payload": payload,
            "payload_hash": sha256_hex(canonical(payload)), "signer": signer.public}
    h = sha256_hex(canonical(body))
    body["hash"] = h
    body["signature"] = signer.sign(h.encode("ascii")).hex()
    return body


def prepare_payload(payload: Any) -> dict[str, Any]:
    """Redact secrets, then normalise to plain JSON. Raises ``carl.validation`` for a non-object payload."""
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise ValidationError(f"ledger payload must be a JSON object, got {type(payload).__name__}",
                              hint="Pass a dict of facts about the action.")
    clean = normalise(redact(payload))
    try:
        size = len(orjson.dumps(clean))  # same length as the canonical form, give or take a float's exponent
    except (orjson.JSONEncodeError, TypeError):
        size = len(canonical(clean))
    if size > MAX_PAYLOAD_BYTES:
        raise ValidationError("ledger payload is larger than 1 MiB",
                              hint="Record a path or a hash of large artefacts, not their content.")
    return clean


def check_action(action: str) -> str:
    if not isinstance(action, str) or not ACTION_RE.match(action):
        raise ValidationError(f"invalid ledger action name {action!r}",
                              hint="Use a dotted lower-case name such as run.start (see docs/ledger.md).",
                              context={"action": str(action)})
    return action


# ----------------------------------------------------------------------------------------------- verify
@dataclass
class VerifyResult:
    ok: bool
    blocks: int  # block lines read (all of them when ok)
    first_bad: int | None = None  # index (position in the chain) of the first bad block
    reason: str | None = None  # human-readable: "<kind>: <detail>"
    kind: str | None = None  # hash_mismatch | payload_hash_mismatch | broken_link | bad_signature |
    #                          torn_block | malformed_block | non_canonical | unknown_signer | bad_rotation
    segment: str | None = None  # file holding the first bad block
    head: str | None = None  # hash of the last good block

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _segments_in(directory: Path) -> list[Path]:
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for e in entries:
        m = SEGMENT_RE.match(e.name)
        if m and e.is_file():
            found.append((int(m.group(1)), Path(e.path)))
    return [p for _, p in sorted(found)]


def _signature_checker() -> Callable[[bytes, bytes], bool]:
    """``check(signature + message, public_key) -> bool`` for 64-byte hex-hash messages. Calls libsodium's
    ``crypto_sign_open`` through pynacl's cffi module with one preallocated output buffer (pynacl's wrapper
    allocates two per call); falls back to ``nacl.bindings.crypto_sign_open``."""
    try:
        from nacl._sodium import ffi, lib

        out = ffi.new("unsigned char[]", 256)
        out_len = ffi.new("unsigned long long *")
        raw = lib.crypto_sign_open

        def check(signed: bytes, pk: bytes) -> bool:
            if len(signed) > 256 or len(pk) != 32:
                return False
            return raw(out, out_len, signed, len(signed), pk) == 0
    except (ImportError, AttributeError):  # pragma: no cover - other pynacl builds
        def check(signed: bytes, pk: bytes) -> bool:
            try:
                bindings.crypto_sign_open(signed, pk)
                return True
            except Exception:
                return False
    return check


def verify_segments(segments: Sequence[Path | tuple[Path, int]], public_keys: Iterable[str]) -> VerifyResult:
    """Recompute every hash, link and signature of the chain stored in ``segments`` (in order), trusting only
    ``public_keys`` for the genesis block; later keys are trusted through ``key.rotate`` blocks signed by the
    key then active. A ``(path, size)`` item reads only the first ``size`` bytes (a snapshot taken under the
    lock, so a concurrent append is not mistaken for a torn block)."""
    trusted = {k.lower() for k in public_keys}
    active: str | None = None
    active_pk = b""
    prev = GENESIS_PREV
    expected = 0
    seen = 0
    sha = hashlib.sha256
    dumps = orjson.dumps
    opt = orjson.OPT_SORT_KEYS
    sign_open = _signature_checker()
    fromhex = bytes.fromhex

    def canon(v: Any) -> bytes:
        out = dumps(v, option=opt)
        return out if fast_ok(out) else canonical(v)

    def bad(kind: str, detail: str, seg: Path) -> VerifyResult:
        return VerifyResult(False, seen, expected, f"{kind.replace('_', ' ')}: {detail}", kind, seg.name,
                            None if expected == 0 else prev)

    for item in segments:
        if isinstance(item, tuple):
            seg, size = item
            with open(seg, "rb") as fh:
                data = fh.read(size)
        else:
            seg, data = item, item.read_bytes()
        if not data:
            continue
        lines = data.split(b"\n")
        torn = lines.pop()
        for line in lines:
            seen += 1
            try:
                b = orjson.loads(line)
            except orjson.JSONDecodeError:
                return bad("malformed_block", "not a JSON object", seg)
            if type(b) is not dict or b.keys() != _FIELDSET:
                return bad("malformed_block", "fields differ from the block format", seg)
            try:
                encoded = canon(b)
            except Exception:
                encoded = b""
            if encoded != line:
                return bad("non_canonical", "stored bytes are not the canonical encoding", seg)
            idx = b["index"]
            if type(idx) is not int or idx != expected:
                return bad("broken_link", f"expected index {expected}, found {idx!r}", seg)
            if b["prev_hash"] != prev:
                return bad("broken_link", f"prev_hash does not match the hash of block {expected - 1}"
                           if expected else "genesis prev_hash is not 64 zeros", seg)
            payload = b["payload"]
            h, sig_hex = b["hash"], b["signature"]
            if (type(payload) is not dict or type(b["action"]) is not str or type(b["ts"]) is not str
                    or type(h) is not str or type(sig_hex) is not str):
                return bad("malformed_block", "payload must be an object; action, ts, hash, signature strings",
                           seg)
            # `line` is now known to be canonical(b), so the canonical encodings of the payload and of the body
            # (b without hash/signature) are byte slices of it: keys are sorted (action, hash, index, payload,
            # payload_hash, prev_hash, signature, signer, ts) and no unescaped quote can occur inside a string,
            # so the first ',"payload":' and the last ',"payload_hash":"' / ',"signature":"' are the top-level ones.
            p0 = line.index(b',"payload":') + 11
            p1 = line.rindex(b',"payload_hash":"')
            if sha(line[p0:p1]).hexdigest() != b["payload_hash"]:
                return bad("payload_hash_mismatch", "payload does not match payload_hash", seg)
            hash_field = b'"hash":"' + h.encode() + b'",'
            s0 = line.rindex(b',"signature":"')
            body = line[:s0] + line[s0 + 14 + len(sig_hex.encode()) + 1:]
            body = body.replace(hash_field, b"", 1)
            if sha(body).hexdigest() != h:
                return bad("hash_mismatch", "block content does not match its hash", seg)
            signer = b["signer"]
            if active is None:
                if signer not in trusted:
                    return bad("unknown_signer", f"genesis signer {str(signer)[:16]}… is not a trusted key", seg)
                try:
                    active_pk = fromhex(signer)
                except (TypeError, ValueError):
                    return bad("unknown_signer", "signer is not a hex public key", seg)
                active = signer
            elif signer != active:
                return bad("unknown_signer", f"signer {str(signer)[:16]}… is not the active key "
                           f"{active[:16]}…", seg)
            try:
                sig = fromhex(sig_hex)
                if len(sig) != 64 or sig.hex() != sig_hex:  # exactly 128 lower-case hex characters
                    raise ValueError
                if not sign_open(sig + h.encode("ascii"), active_pk):
                    raise ValueError
            except Exception:
                return bad("bad_signature", "signature does not verify with the signer's key", seg)
            if b["action"] == ROTATE_ACTION:
                new = payload.get("public_key")
                if not isinstance(new, str) or len(new) != 64:
                    return bad("bad_rotation", "key.rotate block does not name a 64-hex public key", seg)
                try:
                    active_pk = fromhex(new)
                except ValueError:
                    return bad("bad_rotation", "key.rotate public_key is not hex", seg)
                active = new
            prev = h
            expected += 1
        if torn:
            seen += 1
            return bad("torn_block", "the last line is incomplete (truncated or torn write)", seg)
    return VerifyResult(True, seen, None, None, None, None, prev if expected else None)


def verify_dir(directory: str | Path, public_keys: Iterable[str] | None = None) -> VerifyResult:
    """Verify an exported ledger (segments + ``ledger.pub``) or a ``CARL_HOME/ledger`` with explicit keys."""
    directory = Path(directory)
    segs = _segments_in(directory)
    if public_keys is None:
        pub = directory / _keys.PUB_FILE
        public_keys = _keys.read_public_keys_text(pub.read_text(encoding="ascii")) if pub.is_file() else []
    public_keys = list(public_keys)
    if segs and not public_keys:
        raise CredentialError(f"no public key to verify the ledger in {directory}",
                              hint="Pass --pubkey HEX (or put ledger.pub next to the segments).",
                              context={"dir": str(directory)})
    return verify_segments(segs, public_keys)


# ----------------------------------------------------------------------------------------------- ledger
def _last_line(path: Path) -> bytes | None:
    """The last complete line of ``path`` (without its newline); None for an empty file. Raises
    ``carl.ledger.broken_chain`` when the file does not end with a newline (a torn tail)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return None
        f.seek(size - 1)
        if f.read(1) != b"\n":
            raise LedgerBrokenChain(f"the ledger's last block is torn ({path.name} does not end with a newline)",
                                    hint=REPAIR_HINT, context={"segment": str(path)})
        chunk = 4096
        end = size - 1
        buf = b""
        pos = end
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start) + buf
            pos = start
            nl = buf.rfind(b"\n")
            if nl >= 0:
                return buf[nl + 1:]
        return buf


@dataclass
class _Tail:
    index: int
    hash: str
    signer: str  # the key that must sign the next block


def _tail_of(block: dict[str, Any]) -> _Tail:
    signer = block["signer"]
    if block.get("action") == ROTATE_ACTION:
        signer = block["payload"].get("public_key", signer)
    return _Tail(block["index"], block["hash"], signer)


class Ledger:
    """One CARL_HOME's ledger. Cheap to construct; every append takes the cross-process lock."""

    def __init__(self, home: CarlHome | None = None, *, segment_bytes: int | None = None,
                 lock_timeout: float | None = None):
        self.home = home or CarlHome.from_env()
        env_cap = os.environ.get("CARL_LEDGER_SEGMENT_BYTES")
        self.segment_bytes = int(segment_bytes or (int(env_cap) if env_cap else DEFAULT_SEGMENT_BYTES))
        env_to = os.environ.get("CARL_LEDGER_LOCK_TIMEOUT")
        self.lock_timeout = float(lock_timeout if lock_timeout is not None
                                  else (float(env_to) if env_to else DEFAULT_LOCK_TIMEOUT))

    # paths
    @property
    def dir(self) -> Path:
        return self.home.ledger

    @property
    def lock_path(self) -> Path:
        return self.dir / ".lock"

    def segments(self) -> list[Path]:
        return _segments_in(self.dir)

    # lock
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the exclusive cross-process ledger lock (``carl.ledger.locked`` after ``lock_timeout`` s)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.lock_timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LedgerLocked(f"the ledger is locked by another process (waited {self.lock_timeout:g} s)",
                                           context={"lock": str(self.lock_path)}) from None
                    time.sleep(random.uniform(0.0005, 0.005))
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # reading
    def _tail(self) -> _Tail | None:
        for seg in reversed(self.segments()):
            line = _last_line(seg)
            if line is None:
                continue
            try:
                block = orjson.loads(line)
                return _tail_of(block)
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise LedgerBrokenChain(f"the ledger's last block in {seg.name} is unreadable",
                                        context={"segment": str(seg)}) from None
        return None

    def head(self) -> dict[str, Any] | None:
        """The last block (parsed), or None for an empty ledger."""
        for seg in reversed(self.segments()):
            line = _last_line(seg)
            if line is not None:
                return orjson.loads(line)
        return None

    def iter_blocks(self, *, since_ts: str | None = None) -> Iterator[dict[str, Any]]:
        """Every parseable block in order (malformed/torn lines are skipped; `verify` reports them). With
        ``since_ts`` (a block-format timestamp or a prefix such as ``2025-06-15``) only the segments that can
        hold blocks at or after it are read (callers still filter by ``ts``)."""
        segs = self.segments()
        if since_ts is not None:
            keep: list[Path] = []
            for seg in reversed(segs):
                keep.append(seg)
                try:
                    with open(seg, "rb") as f:
                        first_ts = orjson.loads(f.readline()).get("ts", "")
                except (orjson.JSONDecodeError, AttributeError, OSError):
                    continue
                if isinstance(first_ts, str) and first_ts < since_ts:
                    break
            segs = keep[::-1]
        for seg in segs:
            with open(seg, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        continue
                    try:
                        b = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(b, dict):
                        yield b

    def blocks(self, *, last: int | None = None, action: str | None = None,
               run: str | None = None) -> list[dict[str, Any]]:
        """Blocks filtered by action (exact name, or a prefix ending in '.', e.g. ``run.``) and run id prefix."""
        out = [b for b in self.iter_blocks() if block_matches(b, action=action, run=run)]
        return out[-last:] if last else out

    # writing
    def _open_segment(self, cur: Path | None, need: int) -> Path:
        if cur is None:
            return self.dir / "segment-000000.jsonl"
        size = cur.stat().st_size if cur.exists() else 0
        if size and size + need > self.segment_bytes:
            n = int(SEGMENT_RE.match(cur.name).group(1)) + 1  # type: ignore[union-attr]
            return self.dir / f"segment-{n:06d}.jsonl"
        return cur

    def _write(self, lines: list[bytes]) -> None:
        """Write lines (each ending with a newline) under the lock, rotating segments by size, fsync."""
        segs = self.segments()
        cur = segs[-1] if segs else None
        i = 0
        while i < len(lines):
            target = self._open_segment(cur, len(lines[i]))
            size = target.stat().st_size if target.exists() else 0
            chunk = []
            while i < len(lines) and (not chunk or size + len(lines[i]) <= self.segment_bytes or size == 0):
                chunk.append(lines[i])
                size += len(lines[i])
                i += 1
                if size >= self.segment_bytes:
                    break
            new_file = not target.exists()
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                data = b"".join(chunk)
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
            if new_file:
                dfd = os.open(self.dir, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            cur = target

    def _signer_for(self, tail: _Tail | None, seed: bytes | str | None = None) -> _keys.Signer:
        if tail is None:
            signer, _ = _keys.ensure_signer(self.home, seed)
            return signer
        if not _keys.has_key(self.home):
            raise CredentialError(f"ledger signing key is missing: {self.home.keys / _keys.KEY_FILE}",
                                  hint="Restore CARL_HOME/keys/ledger.key from a backup; a new key would not be "
                                       "trusted by the existing chain.",
                                  context={"key_path": str(self.home.keys / _keys.KEY_FILE)})
        signer = _keys.load_signer(self.home)
        if signer.public != tail.signer:
            raise CredentialError("ledger signing key does not match the chain's active signer",
                                  hint="Restore the key that signed the last block (keys/ledger.key).",
                                  context={"key_id": _keys.key_id(signer.public),
                                           "expected_key_id": _keys.key_id(tail.signer)})
        return signer

    def _genesis(self, signer: _keys.Signer, ts: str) -> dict[str, Any]:
        return make_block(0, ts, GENESIS_PREV, GENESIS_ACTION, prepare_payload({"public_key": signer.public}),
                          signer)

    def init(self, *, seed: bytes | str | None = None, ts: float | str | None = None) -> tuple[dict[str, Any], bool]:
        """Create the signing key and the genesis block if absent. Returns (genesis block, created)."""
        self.home.ensure()
        with self.locked():
            tail = self._tail()
            if tail is not None:
                first = next(self.iter_blocks(), None)
                _keys.load_signer(self.home)  # a clear carl.credential when the key is gone
                return first or {}, False
            signer = self._signer_for(None, seed)
            block = self._genesis(signer, format_ts(ts))
            self._write([canonical(block) + b"\n"])
            return block, True

    def append_many(self, items: Iterable[tuple[Any, ...]], *, _internal: bool = False) -> list[dict[str, Any]]:
        """Append ``(action, payload)`` or ``(action, payload, ts)`` items under one lock hold and one fsync
        per touched segment. Initialises the key and the genesis block on first use."""
        prepared = []
        for item in items:
            action, payload = item[0], item[1]
            ts = item[2] if len(item) > 2 else None
            check_action(action)
            if action in RESERVED_ACTIONS and not _internal:
                raise ValidationError(f"{action} is recorded by the ledger itself",
                                      hint="Use `carl --batch ledger rotate-key` / `ledger init`.")
            prepared.append((action, prepare_payload(payload), ts))
        if not prepared:
            return []
        self.home.ensure()
        out: list[dict[str, Any]] = []
        lines: list[bytes] = []
        with self.locked():
            tail = self._tail()
            signer = self._signer_for(tail)
            if tail is None:
                g = self._genesis(signer, format_ts(prepared[0][2]))
                lines.append(canonical(g) + b"\n")
                tail = _tail_of(g)
            index, prev = tail.index + 1, tail.hash
            for action, payload, ts in prepared:
                block = make_block(index, format_ts(ts), prev, action, payload, signer)
                lines.append(canonical(block) + b"\n")
                out.append(block)
                index, prev = index + 1, block["hash"]
            self._write(lines)
        return out

    def append(self, action: str, payload: dict[str, Any] | None = None, *,
               ts: float | str | None = None) -> dict[str, Any]:
        """Append one block (redacted payload) and return it."""
        return self.append_many([(action, payload or {}, ts)])[0]

    def rotate_key(self, *, seed: bytes | str | None = None, ts: float | str | None = None) -> dict[str, Any]:
        """Make a new signing key: a ``key.rotate`` block signed by the old key names the new public key;
        later blocks are signed by the new key."""
        self.home.ensure()
        new = _keys.signer_from_seed(seed) if seed is not None else _keys.new_signer()
        with self.locked():
            tail = self._tail()
            if tail is None:
                raise ValidationError("the ledger is empty: nothing to rotate",
                                      hint="Run `carl --batch ledger init` first.")
            old = self._signer_for(tail)
            if new.public == old.public:
                raise ValidationError("the new key equals the current key")
            payload = prepare_payload({"public_key": new.public, "previous": old.public})
            block = make_block(tail.index + 1, format_ts(ts), tail.hash, ROTATE_ACTION, payload, old)
            self._write([canonical(block) + b"\n"])
            _keys.install_signer(self.home, new)
        return block

    # verification / status / export
    def repair(self, *, ts: float | str | None = None) -> dict[str, Any]:
        """Move a torn tail aside and record that it was (see the module docstring). Returns
        ``{"repaired", "quarantine", "segment", "offset", "size", "sha256", "block"}``; ``{"repaired": false}``
        when nothing is torn. Refuses (``carl.ledger.broken_chain``) when anything else is broken."""
        self.home.ensure()
        with self.locked():
            segs = [s for s in self.segments() if s.stat().st_size > 0]
            if not segs:
                return {"repaired": False, "reason": "the ledger is empty"}
            last = segs[-1]
            data = last.read_bytes()
            if data.endswith(b"\n"):
                res = verify_segments(segs, self.public_keys())
                if not res.ok:
                    raise LedgerBrokenChain(f"nothing is torn, and the ledger does not verify: {res.reason}",
                                            hint="`ledger repair` only moves a torn last line aside; restore the "
                                                 "ledger from an export.", context=res.to_dict())
                return {"repaired": False, "reason": "the last block is complete: nothing to repair"}
            cut = data.rfind(b"\n") + 1
            torn = data[cut:]
            res = verify_segments([*segs[:-1], (last, cut)], self.public_keys())
            if not res.ok:
                raise LedgerBrokenChain(f"refusing to repair: the ledger before the torn tail does not verify "
                                        f"({res.reason})", hint="Only a torn last line can be repaired; restore the "
                                        "ledger from an export.", context=res.to_dict())
            digest = hashlib.sha256(torn).hexdigest()
            qdir = self.dir / QUARANTINE_DIR
            qdir.mkdir(mode=0o700, exist_ok=True)
            qpath = qdir / f"{last.stem}.{cut}.{digest[:12]}.torn"
            fd = os.open(qpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(torn)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if qpath.read_bytes() != torn:
                raise LedgerBrokenChain("the quarantine copy of the torn tail does not match; nothing was changed",
                                        context={"quarantine": str(qpath)})
            with open(last, "r+b") as fh:
                fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())
            tail = self._tail()
            signer = self._signer_for(tail)
            payload = prepare_payload({"segment": last.name, "offset": cut, "size": len(torn), "sha256": digest,
                                       "quarantine": f"{QUARANTINE_DIR}/{qpath.name}"})
            if tail is None:
                g = self._genesis(signer, format_ts(ts))
                self._write([canonical(g) + b"\n"])
                tail = _tail_of(g)
            block = make_block(tail.index + 1, format_ts(ts), tail.hash, RECOVERED_ACTION, payload, signer)
            self._write([canonical(block) + b"\n"])
        return {"repaired": True, "quarantine": str(qpath), "segment": last.name, "offset": cut,
                "size": len(torn), "sha256": digest, "block": block}

    def public_keys(self) -> list[str]:
        return _keys.public_keys(self.home)

    def snapshot(self) -> list[tuple[Path, int]]:
        """(segment, size) of every segment, taken under the lock: a consistent, append-only prefix to read
        without holding the lock. Without a writable ledger directory: the sizes as they are."""
        try:
            with self.locked():
                return [(p, p.stat().st_size) for p in self.segments()]
        except OSError:
            return [(p, p.stat().st_size) for p in self.segments()]

    def verify(self, public_keys: Iterable[str] | None = None) -> VerifyResult:
        segs = self.snapshot()
        if public_keys is None:
            public_keys = self.public_keys()
            if any(size for _, size in segs) and not public_keys:
                raise CredentialError(f"no ledger public key in {self.home.keys} to verify the chain with",
                                      hint="Restore CARL_HOME/keys/ (ledger.pub) from a backup, or verify an "
                                           "export with `ledger verify --dir DIR`.",
                                      context={"key_path": str(self.home.keys / _keys.PUB_FILE)})
        return verify_segments(segs, public_keys)

    def status(self) -> dict[str, Any]:
        segs = self.segments()
        head = None
        torn = False
        try:
            head = self.head()
        except LedgerBrokenChain:
            torn = True
        except orjson.JSONDecodeError:
            torn = True
        pubs = self.public_keys()
        current = None
        if _keys.has_key(self.home):
            try:
                current = _keys.load_signer(self.home).public
            except CredentialError:
                current = None
        return {
            "initialised": bool(head) or torn,
            "path": str(self.dir),
            "blocks": (head["index"] + 1) if isinstance(head, dict) and isinstance(head.get("index"), int) else 0,
            "segments": len(segs),
            "bytes": sum(s.stat().st_size for s in segs),
            "head": None if not isinstance(head, dict) else {k: head.get(k) for k in ("index", "ts", "action", "hash")},
            "torn_tail": torn,
            "signer": current,
            "key_id": _keys.key_id(current) if current else None,
            "key_present": current is not None,
            "public_keys": pubs,
        }

    def export(self, dest: str | Path) -> dict[str, Any]:
        """Copy the segments and every public key to ``dest`` (a third party verifies with
        ``ledger verify --dir DEST``). Writes ``MANIFEST.json`` with each segment's sha256."""
        dest = Path(dest)
        if dest.exists() and not dest.is_dir():
            raise ValidationError(f"export destination {dest} is not a directory")
        if _segments_in(dest):
            raise ValidationError(f"export destination {dest} already holds ledger segments",
                                  hint="Export into a new or empty directory.")
        dest.mkdir(parents=True, exist_ok=True)
        with self.locked():
            segs = self.segments()
            files = []
            for s in segs:
                shutil.copyfile(s, dest / s.name)
                files.append({"name": s.name, "bytes": s.stat().st_size,
                              "sha256": hashlib.sha256((dest / s.name).read_bytes()).hexdigest()})
            pubs = self.public_keys()
            (dest / _keys.PUB_FILE).write_text("".join(k + "\n" for k in pubs), encoding="ascii")
            head = self.head() if segs else None
        manifest = {"format": "carl-ledger/1", "blocks": (head["index"] + 1) if head else 0,
                    "head": head["hash"] if head else None, "segments": files, "public_keys": pubs}
        (dest / "MANIFEST.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        return {"dir": str(dest), **manifest}


def block_matches(b: dict[str, Any], *, action: str | None = None, run: str | None = None) -> bool:
    if action:
        a = b.get("action", "")
        if not (a == action or (action.endswith(".") and str(a).startswith(action))
                or str(a).startswith(action + ".")):
            return False
    if run:
        p = b.get("payload") if isinstance(b.get("payload"), dict) else {}
        rid = p.get("run_id") or p.get("run") or ""
        if not str(rid).startswith(run):
            return False
    return True
