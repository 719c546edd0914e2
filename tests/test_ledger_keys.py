"""Ledger keys: created atomically with safe modes, clear carl.credential errors, rotation."""

from __future__ import annotations

import os
import stat

import pytest

from engine.errors import CredentialError
from engine.home import CarlHome
from engine.ledger import Ledger, keys


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_key_created_with_safe_modes_and_public_key_exported():
    home = CarlHome.from_env()
    signer, created = keys.ensure_signer(home, seed="alice")
    assert created
    assert _mode(home.keys) == 0o700
    assert _mode(home.keys / keys.KEY_FILE) == 0o600
    assert keys.public_keys(home) == [signer.public]
    assert len(signer.public) == 64
    # no temp files left behind, the seed is not the public key, and repr never shows the seed
    assert sorted(p.name for p in home.keys.iterdir()) == [keys.KEY_FILE, keys.PUB_FILE]
    assert signer.seed.hex() not in repr(signer)
    # second call loads the same key
    again, created2 = keys.ensure_signer(home, seed="bob")
    assert not created2 and again.public == signer.public


def test_seeded_keys_are_deterministic_and_sign_verify():
    a, b = keys.signer_from_seed("alice"), keys.signer_from_seed("alice")
    assert a.public == b.public
    sig = a.sign(b"hello").hex()
    assert keys.verify_signature(a.public, b"hello", sig)
    assert not keys.verify_signature(a.public, b"hellO", sig)
    assert not keys.verify_signature(keys.signer_from_seed("mallory").public, b"hello", sig)
    assert not keys.verify_signature(a.public, b"hello", "zz")


def test_missing_key_is_a_credential_error():
    home = CarlHome.from_env()
    with pytest.raises(CredentialError) as ei:
        keys.load_signer(home)
    assert ei.value.code == "carl.credential" and ei.value.exit_code == 3
    assert "ledger init" in ei.value.hint


def test_malformed_and_unreadable_key():
    home = CarlHome.from_env()
    keys.ensure_signer(home, seed="alice")
    kp = home.keys / keys.KEY_FILE
    kp.write_text("not hex\n")
    with pytest.raises(CredentialError, match="malformed"):
        keys.load_signer(home)
    if os.geteuid() != 0:
        kp.write_text("00" * 32 + "\n")
        os.chmod(kp, 0)
        with pytest.raises(CredentialError, match="unreadable"):
            keys.load_signer(home)


def test_missing_key_with_existing_chain_refuses_to_sign_with_a_new_key():
    home = CarlHome.from_env()
    led = Ledger(home)
    led.init(seed="alice")
    (home.keys / keys.KEY_FILE).unlink()
    with pytest.raises(CredentialError):
        led.append("run.start", {"run_id": "r"})
    # a different key (e.g. copied from elsewhere) is refused too
    keys.install_signer(home, keys.signer_from_seed("eve"))
    with pytest.raises(CredentialError, match="active signer"):
        led.append("run.start", {"run_id": "r"})


def test_rotation_block_signed_by_old_key_names_new_one():
    home = CarlHome.from_env()
    led = Ledger(home)
    led.init(seed="alice")
    old = keys.signer_from_seed("alice")
    new = keys.signer_from_seed("bob")
    led.append("run.start", {"run_id": "r1"})
    rot = led.rotate_key(seed="bob")
    assert rot["action"] == "key.rotate" and rot["signer"] == old.public
    assert rot["payload"] == {"public_key": new.public, "previous": old.public}
    after = led.append("run.stop", {"run_id": "r1"})
    assert after["signer"] == new.public
    assert keys.public_keys(home) == [old.public, new.public]
    assert _mode(home.keys / keys.KEY_FILE) == 0o600
    res = led.verify()
    assert res.ok and res.blocks == 4
    # the genesis key alone is enough: the new key is trusted through the rotation block
    assert led.verify([old.public]).ok
    # but not the new key alone: the genesis signer is unknown then
    res = led.verify([new.public])
    assert not res.ok and res.first_bad == 0 and res.kind == "unknown_signer"
