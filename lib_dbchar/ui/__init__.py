"""The Gradio tabs (imports gradio; the core never imports this package)."""
