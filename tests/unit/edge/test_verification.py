"""The verifier layer over bytes: MANI + SIGS + trust + time -> verified manifest, no capsule I/O."""

from __future__ import annotations

import base64

from datetime import datetime, timezone

import pytest

from edge.errors import ExpiredCapsuleError, IntegrityError, SignatureError
from edge.trust import DeviceState
from edge.verification import verify_manifest
from firmware_tools.cosign import read_sections

from ...vectors.harness import VECTORS, private_key, public_key

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)
SECTIONS = read_sections((VECTORS / "ok" / "capsule").read_bytes())
LENGTHS = {tag: len(data) for tag, data in SECTIONS.items()}
KEYS = dict(trusted_keys=[public_key("test-publisher-1")], identities=[private_key("test-device")])


def test_genuine_bytes_verify_and_move_the_floor_to_issued_at():
    device = DeviceState()
    manifest, rules = verify_manifest(SECTIONS["MANI"], SECTIONS["SIGS"], section_lengths=LENGTHS, now=NOW,
                                      device=device, **KEYS)
    assert manifest.name == "alpha" and device.floor_at == max(NOW, manifest.issued_at)


def test_a_flipped_signature_is_refused_and_moves_no_state():
    start = SECTIONS["SIGS"].index(b'"sig":"') + 7
    end = SECTIONS["SIGS"].index(b'"', start)
    signature = bytearray(base64.b64decode(SECTIONS["SIGS"][start:end]))
    signature[5] ^= 1  # one bit of the signature itself, still valid base64 (any base64 flip may not be)
    sigs = SECTIONS["SIGS"][:start] + base64.b64encode(bytes(signature)) + SECTIONS["SIGS"][end:]
    device = DeviceState()
    with pytest.raises((SignatureError, IntegrityError)):
        verify_manifest(SECTIONS["MANI"], bytes(sigs), section_lengths=LENGTHS, now=NOW, device=device, **KEYS)
    assert device.floor_at == NOW  # the wall clock only; no verified issued_at was taken


def test_section_lengths_must_be_the_manifests():
    with pytest.raises(IntegrityError, match="VIDE section is"):
        verify_manifest(SECTIONS["MANI"], SECTIONS["SIGS"], section_lengths={**LENGTHS, "VIDE": LENGTHS["VIDE"] + 1},
                        now=NOW, **KEYS)


def test_the_validity_window_is_judged_at_the_callers_time():
    with pytest.raises(ExpiredCapsuleError):
        verify_manifest(SECTIONS["MANI"], SECTIONS["SIGS"], section_lengths=LENGTHS,
                        now=datetime(2099, 1, 1, tzinfo=timezone.utc), **KEYS)
