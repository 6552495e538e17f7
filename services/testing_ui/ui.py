"""The Gradio page (gr.Blocks): inputs on the left, what every stage did on the right, filled in while the
streamed turn arrives. Its event handlers are plain generator functions over `FleetClient`, run by Gradio in
worker threads (never on the event loop); ``api_name`` makes them callable with gradio_client too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from services.testing_ui.client import FleetClient, TurnView

STAGE_ORDER = ("preprocess", "stt", "guard_input", "memory", "agent", "first_text", "guard_output", "tts",
               "first_audio", "total")


def stage_rows(view: TurnView) -> list[list[Any]]:
    names = [s for s in STAGE_ORDER if s in view.timings] + sorted(set(view.timings) - set(STAGE_ORDER))
    labels = {"first_text": "first answer text (since start)", "first_audio": "first audio (since start)"}
    return [[labels.get(s, s), round(float(view.timings[s]))] for s in names]


def details(view: TurnView) -> str:
    """Markdown: who served the turn, each stage's engine, guardrail verdicts, tool calls, notes, errors."""
    blocks: list[str] = []
    if view.error:
        blocks.append(f"**Error:** {view.error}")
    if view.served_by:
        served = f"**Served by:** {view.served_by}"
        if view.fallback_reason:
            served += f" (fallback: the primary could not serve it: {view.fallback_reason})"
        blocks.append(served)
    if view.engines:
        blocks.append("\n".join(f"- {stage}: {engine}" for stage, engine in view.engines.items()))
    if view.done and not view.error:
        blocks.append("**Guardrails:** " + (f"blocked ({view.block_reason})" if view.blocked else "passed"))
    if view.tool_calls:
        blocks.append("**Tools:**\n" + "\n".join(
            f"- `{c.get('name')}` {c.get('args')} -> {'ok' if c.get('ok', True) else 'failed'}: {c.get('result')}"
            for c in view.tool_calls))
    if view.notes:
        blocks.append("\n".join(f"- note: {note}" for note in view.notes))
    if not view.done:
        blocks.append("_answering..._")
    return "\n\n".join(blocks)


def status_markdown(client: FleetClient) -> str:
    rows = [f"- {name} ({url}): {state}" for name, url, state in client.status()]
    voices, _, why = client.voices()
    rows.append(f"- voices: {len(voices)} listed" + (f" ({why})" if why else ""))
    return "**Fleet**\n" + "\n".join(rows)


def build_ui(client: FleetClient) -> gr.Blocks:
    with gr.Blocks(title="audio-orchestrator testing UI") as demo:
        session = gr.State(FleetClient.new_session)
        gr.Markdown("## audio-orchestrator testing UI\nSpeak, upload a recording or type; every stage of the turn "
                    "shows up on the right as the fleet answers.")
        with gr.Row():
            with gr.Column(scale=1):
                audio_in = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Speak or upload",
                                    elem_id="audio-in")
                voice = gr.Dropdown(label="Voice (tts-bark: Bark presets, then Piper voices)", choices=[],
                                    allow_custom_value=True, elem_id="voice")
                denoise = gr.Checkbox(label="Denoise recordings before stt (audio-preprocessor)", value=True,
                                      elem_id="denoise")
                guard_md = gr.Markdown()
                send_voice = gr.Button("Send recording", variant="primary", elem_id="send-voice")
                text_in = gr.Textbox(label="Or type", placeholder="What is 12 times 7?", elem_id="text-in")
                send_text = gr.Button("Send text", variant="primary", elem_id="send-text")
                with gr.Row():
                    new_conversation = gr.Button("New conversation", elem_id="new-conversation")
                    refresh = gr.Button("Check the fleet")
                session_md = gr.Markdown()
                fleet_md = gr.Markdown(elem_id="fleet-status")
            with gr.Column(scale=2):
                chat = gr.Chatbot(label="Conversation", height=320, elem_id="conversation")
                transcript = gr.Textbox(label="Transcript", interactive=False, elem_id="transcript")
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                spoken = gr.Audio(label="Spoken answer", type="numpy", interactive=False, elem_id="spoken")
                stage_md = gr.Markdown(elem_id="stages")
                timings = gr.Dataframe(headers=["stage", "ms"], label="Timings (ms)", interactive=False,
                                       elem_id="timings")

        outputs = [chat, transcript, answer, spoken, stage_md, timings]

        def show(view: TurnView, history: list[dict[str, str]]) -> tuple[Any, ...]:
            said = view.transcript if view.transcript is not None else "..."
            reply = view.answer or (f"({view.error})" if view.error else "...")
            turn = [{"role": "user", "content": said}, {"role": "assistant", "content": reply}]
            return (history + turn, view.transcript or "", view.answer, view.wav(), details(view), stage_rows(view))

        def run(turns: Iterator[TurnView], history: list[dict[str, str]] | None) -> Iterator[tuple[Any, ...]]:
            for view in turns:
                yield show(view, list(history or []))

        def voice_turn(path: str | None, sid: str, history: list[dict[str, str]] | None, voice_name: str | None = None,
                       denoised: bool = True) -> Iterator[tuple[Any, ...]]:
            if not path:
                raise gr.Error("Record or upload some audio first.")
            yield from run(client.voice_turn(path, sid, voice=voice_name or None, preprocess=denoised), history)

        def text_turn(text: str, sid: str, history: list[dict[str, str]] | None,
                      voice_name: str | None = None) -> Iterator[tuple[Any, ...]]:
            if not (text or "").strip():
                raise gr.Error("Type something first.")
            yield from run(client.text_turn(text.strip(), sid, voice=voice_name or None), history)

        def on_load(sid: str) -> tuple[Any, ...]:
            names, default, _ = client.voices()
            config = client.config()
            guard = ("**Guardrails:** " + ("on" if config["enable_guardrails"] else "off") + " on orchestrator-enhanced"
                     " (ENABLE_GUARDRAILS, a deployment setting: a page switch would let anyone bypass them)"
                     if config else "**Guardrails:** orchestrator-enhanced cannot be asked right now")
            denoise_default = bool(config["enable_preprocessing"]) if config else True
            return (status_markdown(client), f"Conversation `{sid}`",
                    gr.Dropdown(choices=names, value=default if default in names else None), guard,
                    gr.Checkbox(value=denoise_default))

        def restart() -> tuple[str, list[Any], str]:
            sid = FleetClient.new_session()
            return sid, [], f"Conversation `{sid}`"

        send_voice.click(voice_turn, [audio_in, session, chat, voice, denoise], outputs, api_name="voice_turn")
        send_text.click(text_turn, [text_in, session, chat, voice], outputs, api_name="text_turn")
        text_in.submit(text_turn, [text_in, session, chat, voice], outputs, api_name=False)
        new_conversation.click(restart, None, [session, chat, session_md], api_name="new_conversation")
        refresh.click(lambda: status_markdown(client), None, fleet_md, api_name="fleet_status")
        demo.load(on_load, session, [fleet_md, session_md, voice, guard_md, denoise], api_name=False)
    return demo
