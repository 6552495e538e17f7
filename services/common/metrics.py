"""Every metric of the fleet, defined once. The app factory mounts /metrics and sets `service`.

Names the plan's dashboard queries are kept exactly (`request_duration_seconds`,
`service_health_status{component}`; guardrails adds `guardrail_blocks_total{reason}` and
`guardrail_latency_seconds` here).
Labels come from a small closed vocabulary; never ids, text, raw paths or exception strings.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_service = "unknown"


def set_service(name: str) -> None:
    """Called once by the app factory; one service per process."""
    global _service
    _service = name


def service() -> str:
    return _service


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# --- HTTP server side ---------------------------------------------------------------------------------
REQUESTS = Counter(
    "requests_total", "HTTP requests answered", ["service", "route", "method", "status"]
)
REQUEST_DURATION = Histogram(
    "request_duration_seconds",
    "HTTP request latency, by templated route and status",
    ["service", "route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
HEALTH = Gauge(
    "service_health_status",
    "1 when healthy; component=overall is readiness, other components are engines and dependencies",
    ["service", "component"],
)

# --- engines --------------------------------------------------------------------------------------------
INFERENCE_DURATION = Histogram(
    "engine_inference_duration_seconds",
    "Time spent in blocking model calls",
    ["service", "engine", "operation"],
    buckets=LATENCY_BUCKETS,
)
ENGINE_ERRORS = Counter("engine_errors_total", "Engine errors by code", ["service", "engine", "code"])
FALLBACKS = Counter(
    "engine_fallbacks_total",
    "Calls served by a fallback engine or URL, by what failed and why",
    ["service", "engine_from", "engine_to", "reason"],
)
INFERENCE_QUEUE = Gauge(
    "engine_queue_depth", "Calls waiting for or holding an inference slot", ["service", "engine"]
)
REJECTED = Counter(
    "engine_rejected_total", "Calls refused with 503 because the queue was full", ["service", "engine"]
)

# --- HTTP client side -----------------------------------------------------------------------------------
CLIENT_REQUESTS = Counter(
    "client_requests_total", "Calls to other services by outcome", ["service", "target", "outcome"]
)
CLIENT_DURATION = Histogram(
    "client_request_duration_seconds",
    "Latency of calls to other services (one attempt each)",
    ["service", "target"],
    buckets=LATENCY_BUCKETS,
)
CIRCUIT_STATE = Gauge(
    "client_circuit_state", "Circuit breaker per target: 0 closed, 1 half-open, 2 open", ["service", "target"]
)

# --- audio engines (stt, tts, denoise) ------------------------------------------------------------------
AUDIO_SECONDS = Counter(
    "audio_processed_seconds_total", "Seconds of audio produced or consumed", ["service", "engine", "operation"]
)
REAL_TIME_FACTOR = Histogram(
    "engine_real_time_factor",
    "Processing time divided by audio duration (below 1 is faster than real time)",
    ["service", "engine", "operation"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0),
)
TTS_FIRST_CHUNK = Histogram(
    "tts_first_chunk_seconds", "Time from request to the first audio bytes", ["service", "engine"],
    buckets=LATENCY_BUCKETS,
)

# --- LLM engines -------------------------------------------------------------------------------------------
LLM_TOKENS = Counter("llm_tokens_total", "Tokens read (kind=prompt) and generated (kind=completion)",
                     ["service", "engine", "kind"])
LLM_BATCH_SIZE = Histogram("llm_batch_size", "Requests (rows) per generate call of a batching engine",
                           ["service", "engine"], buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32))


# --- guardrails ----------------------------------------------------------------------------------------------
GUARDRAIL_BLOCKS = Counter(
    "guardrail_blocks_total",
    "Texts guardrails judged unsafe, by reason (reason=pii: outputs whose PII was redacted; they still pass)",
    ["service", "reason"],
)
GUARDRAIL_LATENCY = Histogram(
    "guardrail_latency_seconds", "Time one guardrail check (scanner) took", ["service", "check"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

# --- orchestrator ----------------------------------------------------------------------------------------------
ORCH_TURNS = Counter(
    "orchestrator_turns_total",
    "Turns answered, by kind (text|voice|voice_stream), outcome (ok|blocked|error) and prompt version",
    ["service", "kind", "outcome", "prompt_version"],
)
ORCH_STAGE_LATENCY = Histogram(
    "orchestrator_stage_seconds",
    "Time one stage of a turn took (preprocess, stt, guard_input, agent, guard_output, tts, first_audio, turn)",
    ["service", "stage"],
    buckets=LATENCY_BUCKETS,
)
ORCH_FALLBACKS = Counter(
    "orchestrator_fallbacks_total",
    "Turn stages served by a fallback or degraded (llm, tts, preprocess, memory, guardrails), and why",
    ["service", "stage", "reason"],
)
ORCH_BLOCKED = Counter(
    "orchestrator_blocked_turns_total",
    "Turns refused or answers withheld by guardrails, by direction (input|output) and reason",
    ["service", "direction", "reason"],
)
ORCH_TOOL_CALLS = Counter(
    "orchestrator_tool_calls_total", "Tool calls the agent made, by tool and outcome (ok|error)",
    ["service", "tool", "outcome"],
)
