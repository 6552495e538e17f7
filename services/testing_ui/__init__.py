"""testing-ui: the Gradio test bench where a developer speaks or types to the fleet and sees every stage."""
