"""Each rule of FORMAT.md §4.2: parameters checked, enforced, refusals logged with numbers."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from edge.errors import (
    CapsuleFormatError,
    ExpiredCapsuleError,
    NotYetValidError,
    RateLimitedError,
    RuleViolationError,
)
from edge.manifest import KNOWN_RULES, canonical_json, parse_manifest
from edge.rules import MemoryUseLog, RateLimit, Rules, UsePolicy, admit_use, check_validity_at, parse_rules

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
KEY_A, KEY_B = "aa" * 32, "bb" * 32


def rule(**params):
    return {"optional": False, **params}


def test_known_rules_are_the_ones_parse_rules_implements():
    assert KNOWN_RULES == {"devices", "operations", "query_limits", "rate_limit", "purge_on_expiry", "min_runtime"}


def test_absent_rules_allow_everything():
    rules = parse_rules({})
    assert rules == Rules()
    rules.check_device(device_keyids=[], hardware_id=None)
    rules.check_runtime("0.1.0")
    for op in ("search", "read", "export"):
        rules.check_operation(op, k=1000)


@pytest.mark.parametrize("raw, fragment", [
    ({"devices": rule(keyids=[], hardware_ids=[])}, "neither keyids nor hardware_ids"),
    ({"devices": rule(keyids=[KEY_B, KEY_A], hardware_ids=[])}, "sorted without duplicates"),
    ({"devices": rule(keyids=["zz"], hardware_ids=[])}, "well-formed"),
    ({"devices": rule(keyids=[KEY_A])}, "hardware_ids is missing"),
    ({"operations": rule(allow=[])}, "list of 1..3"),
    ({"operations": rule(allow=["delete"])}, "well-formed"),
    ({"query_limits": rule(max_k=0)}, "1..1024"),
    ({"query_limits": rule(max_k=5, max_chars=10)}, "unknown key(s) max_chars"),
    ({"rate_limit": rule(max_queries=10)}, "window_s is missing"),
    ({"rate_limit": rule(max_queries=10, window_s=0)}, "1..2678400"),
    ({"min_runtime": rule(version="1.2")}, "MAJOR.MINOR.PATCH"),
    ({"min_runtime": rule(version="1.70000.0")}, "0..65535"),
    ({"purge_on_expiry": rule(when="now")}, "unknown key(s) when"),
])
def test_malformed_parameters_of_a_known_rule_are_a_format_error(raw, fragment):
    with pytest.raises(CapsuleFormatError) as info:
        parse_rules(raw)
    assert fragment in str(info.value)


def test_unknown_optional_rules_are_listed_as_ignored():
    assert parse_rules({"geofence": {"optional": True}}).ignored_optional == ("geofence",)


def test_unknown_required_rule_is_refused_by_the_manifest(manifest_dict):
    manifest_dict["rules"] = {"geofence": {"optional": False}}
    manifest = parse_manifest(canonical_json(manifest_dict))
    with pytest.raises(RuleViolationError, match="requires rule 'geofence'"):
        manifest.check_rules()


def test_devices_rule_matches_key_ids_and_hardware_ids():
    by_key = parse_rules({"devices": rule(keyids=[KEY_A], hardware_ids=[])})
    by_key.check_device(device_keyids=[KEY_B, KEY_A], hardware_id=None)
    with pytest.raises(RuleViolationError, match="restricted to 1 device key"):
        by_key.check_device(device_keyids=[KEY_B], hardware_id="kiosk-1")
    with pytest.raises(RuleViolationError, match="none given"):
        by_key.check_device(device_keyids=[], hardware_id=None)
    by_hw = parse_rules({"devices": rule(keyids=[], hardware_ids=["kiosk-1", "kiosk-2"])})
    by_hw.check_device(device_keyids=[], hardware_id="kiosk-2")
    with pytest.raises(RuleViolationError, match="this device's is unknown"):
        by_hw.check_device(device_keyids=[], hardware_id=None)
    both = parse_rules({"devices": rule(keyids=[KEY_A], hardware_ids=["kiosk-1"])})
    with pytest.raises(RuleViolationError, match="hardware id"):  # every non-empty list must match
        both.check_device(device_keyids=[KEY_A], hardware_id="kiosk-9")


def test_min_runtime_compares_versions_numerically():
    rules = parse_rules({"min_runtime": rule(version="0.10.0")})
    rules.check_runtime("0.10.0")
    rules.check_runtime("1.0.0")
    with pytest.raises(RuleViolationError, match="needs runtime 0.10.0 or newer, this is 0.9.9"):
        rules.check_runtime("0.9.9")


def test_operations_and_max_k():
    rules = parse_rules({"operations": rule(allow=["read", "search"]), "query_limits": rule(max_k=3)})
    rules.check_operation("read")
    rules.check_operation("search", k=3)
    with pytest.raises(RuleViolationError, match="'export' is not allowed"):
        rules.check_operation("export")
    with pytest.raises(RuleViolationError, match="asks for 4 results, this capsule allows at most 3"):
        rules.check_operation("search", k=4)


def test_rate_limit_slides_its_window():
    limit = RateLimit(max_queries=2, window_s=60)
    times = admit_use([], limit, T0)
    times = admit_use(times, limit, T0 + timedelta(seconds=10))
    with pytest.raises(RateLimitedError, match="2 queries in the last 60 s") as info:
        admit_use(times, limit, T0 + timedelta(seconds=20))
    assert info.value.retry_after_s == 40
    times = admit_use(times, limit, T0 + timedelta(seconds=61))
    assert times == [T0 + timedelta(seconds=10), T0 + timedelta(seconds=61)]


def test_rate_limit_counts_uses_recorded_after_a_clock_went_back():
    limit = RateLimit(max_queries=1, window_s=60)
    times = admit_use([], limit, T0 + timedelta(days=1))  # the clock was ahead then
    with pytest.raises(RateLimitedError):
        admit_use(times, limit, T0)


def _manifest(manifest_dict, **changes):
    manifest_dict.update(changes)
    return parse_manifest(canonical_json(manifest_dict))


def test_use_policy_refuses_use_after_expiry_and_reports_it(manifest_dict, caplog):
    manifest = _manifest(manifest_dict)
    expired = []
    policy = UsePolicy(manifest, parse_rules({}), log=MemoryUseLog(), on_expired=expired.append)
    policy.before_use("search", at=manifest.not_before, k=5)
    with caplog.at_level(logging.WARNING, logger="edge.rules"), pytest.raises(ExpiredCapsuleError):
        policy.before_use("read", at=manifest.expires_at)
    assert len(expired) == 1 and "refused read on capsule sample v3" in caplog.text


def test_use_policy_counts_uses_at_the_trusted_time(manifest_dict, caplog):
    manifest = _manifest(manifest_dict, rules={"rate_limit": rule(max_queries=1, window_s=3600)})
    floor = manifest.not_before + timedelta(days=10)
    policy = UsePolicy(manifest, parse_rules(manifest.rules), log=MemoryUseLog(),
                       trusted_time=lambda now: max(now, floor))
    policy.before_use("search", at=manifest.not_before, k=1)
    with caplog.at_level(logging.WARNING, logger="edge.rules"), pytest.raises(RateLimitedError):
        policy.before_use("search", at=manifest.not_before + timedelta(hours=2), k=1)  # still the floor
    assert "limit 1 per 3600 s" in caplog.text


def test_check_validity_at_names_the_floor(manifest_dict):
    manifest = _manifest(manifest_dict)
    with pytest.raises(ExpiredCapsuleError, match=r"clock 2026-11-05T00:00:00Z, trusted time floor 2028"):
        check_validity_at(manifest, now=datetime(2026, 11, 5, tzinfo=timezone.utc),
                          at=datetime(2028, 1, 1, tzinfo=timezone.utc))
    with pytest.raises(NotYetValidError):
        check_validity_at(manifest, now=datetime(2020, 1, 1, tzinfo=timezone.utc),
                          at=datetime(2020, 1, 1, tzinfo=timezone.utc))
