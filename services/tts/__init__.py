"""Text-to-speech service (compose name ``tts``, port 7000): Piper voices behind ``/synthesize``,
the OpenAI-compatible ``/v1/audio/speech`` and ``/voices``, with sentence-by-sentence streaming.

``engine`` holds the synthesis layer (voice discovery, validation, sentence splitting, Piper);
``settings`` is the only code that reads the environment.
"""
