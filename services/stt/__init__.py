"""Speech-to-text service (compose name ``stt``, port 9000): faster-whisper behind ``/transcribe`` and the
OpenAI-compatible ``/v1/audio/transcriptions``, with optional denoising by the audio-preprocessor first.

``engine`` holds the transcription layer (model resolution and loading, request validation, faster-whisper,
SRT/VTT rendering); ``settings`` is the only code that reads the environment.
"""
