"""Guardrails service (compose name ``guardrails``, port 9310; 9300 in the container): prompt-injection,
jailbreak and toxicity checks on user input (``/validate/input``), toxicity and PII redaction on assistant
output (``/validate/output``), escalations kept in SQLite (``/escalate``, ``/escalations``) and a per-client
rate limiter (``ratelimit``) other services reuse.

``scanners`` holds the scanner contract and the scanners, ``pipeline`` runs them, ``settings`` is the only
code that reads the environment. Figures: docs/guides/guardrails-configuration.md.
"""
