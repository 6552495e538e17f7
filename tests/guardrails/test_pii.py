"""PII redaction (Presidio pattern recognizers, offline): every supported type becomes its typed placeholder,
and look-alikes that fail validation (Luhn, IBAN checksum, SSN rules) stay."""

from __future__ import annotations

import pytest

from services.guardrails.pii import PLACEHOLDERS, Finding, PiiRedactor, resolve_overlaps


@pytest.fixture(scope="module")
def redactor() -> PiiRedactor:
    r = PiiRedactor()
    r.load()
    return r


@pytest.mark.parametrize("text, value, placeholder", [
    ("Write to jane.doe@example.com today.", "jane.doe@example.com", "[EMAIL_REDACTED]"),
    ("Call me at (415) 555-0132 tonight.", "(415) 555-0132", "[PHONE_REDACTED]"),
    ("My number is +44 20 7123 4567.", "+44 20 7123 4567", "[PHONE_REDACTED]"),
    ("Her SSN is 078-05-1123.", "078-05-1123", "[SSN_REDACTED]"),
    ("Card 4111 1111 1111 1111 expires soon.", "4111 1111 1111 1111", "[CREDIT_CARD_REDACTED]"),
    ("Pay with 5555-5555-5555-4444 please.", "5555-5555-5555-4444", "[CREDIT_CARD_REDACTED]"),
    ("The server is 192.168.1.20 now.", "192.168.1.20", "[IP_ADDRESS_REDACTED]"),
    ("Or over IPv6 at 2001:db8::8a2e:370:7334 instead.", "2001:db8::8a2e:370:7334", "[IP_ADDRESS_REDACTED]"),
    ("Transfer to DE89 3704 0044 0532 0130 00 by Friday.", "DE89 3704 0044 0532 0130 00", "[IBAN_REDACTED]"),
    ("IBAN GB82WEST12345698765432 is mine.", "GB82WEST12345698765432", "[IBAN_REDACTED]"),
])
def test_each_supported_type_is_replaced_by_its_placeholder(redactor, text, value, placeholder):
    redacted, findings = redactor.redact(text)
    assert redacted == text.replace(value, placeholder)
    assert [text[f.start:f.end] for f in findings] == [value]


@pytest.mark.parametrize("text", [
    "Card 4111 1111 1111 1112 is a typo.",           # fails the Luhn checksum
    "my credit card number is 4012-8888-8888-1882",   # Presidio's own Luhn-invalid case
    "IBAN DE89 3704 0044 0532 0130 01 is wrong.",      # fails the mod-97 checksum
    "SSN 000-12-3456 is not issued.",                 # area 000 is never issued
    "It is 12:34:56 and version 1.2.3.",              # time and version, not IPs
    "The address info@presidio. has no domain.",      # no public suffix
    "set an alarm for 7 and turn off the lights",
])
def test_invalid_lookalikes_are_left_alone(redactor, text):
    assert redactor.redact(text) == (text, [])


def test_several_types_in_one_text(redactor):
    text = "Email bob@mail.org, card 378282246310005, from 10.0.0.7."
    redacted, findings = redactor.redact(text)
    assert redacted == "Email [EMAIL_REDACTED], card [CREDIT_CARD_REDACTED], from [IP_ADDRESS_REDACTED]."
    assert [f.entity for f in findings] == ["EMAIL_ADDRESS", "CREDIT_CARD", "IP_ADDRESS"]


def test_overlaps_keep_the_stronger_finding():
    kept = resolve_overlaps([Finding("PHONE_NUMBER", 5, 21, 0.4), Finding("CREDIT_CARD", 5, 21, 1.0),
                             Finding("EMAIL_ADDRESS", 30, 40, 1.0)])
    assert [(f.entity, f.start) for f in kept] == [("CREDIT_CARD", 5), ("EMAIL_ADDRESS", 30)]


def test_min_score_drops_weak_patterns(redactor):
    strict = PiiRedactor(min_score=0.5)
    strict.load()
    # bare 9 digits: Presidio's weakest SSN pattern (0.05) and a phone number (0.4)
    assert redactor.redact("id 078051121")[0] != "id 078051121"
    assert strict.redact("id 078051121")[0] == "id 078051121"
    assert strict.redact("SSN 078-05-1123")[0] == "SSN [SSN_REDACTED]"  # delimited: 0.5


def test_unknown_types_are_refused():
    with pytest.raises(ValueError, match="unsupported PII types"):
        PiiRedactor(entities=("PERSON",))
    assert set(PLACEHOLDERS) == {"EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "CREDIT_CARD", "IP_ADDRESS", "IBAN_CODE"}
