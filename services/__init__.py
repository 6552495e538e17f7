"""audio-orchestrator services: one package per fleet member, plus `common`."""
