"""Expressive text-to-speech (compose name ``tts-bark``, port 7120; 7100 in the container): Bark voices with
the Piper tts service as a per-sentence fallback, behind ``/synthesize``, the OpenAI-compatible
``/v1/audio/speech`` and ``/voices``.

``engine`` holds the synthesis layer (`BarkEngine`, `PiperClient`, the `FallbackTts` chain); ``app`` the
routes; ``settings`` is the only code that reads the environment; ``testing`` the fake engine and the
random-weight Bark checkpoints used by the tests and the benchmark.
"""
