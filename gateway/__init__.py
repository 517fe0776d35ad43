"""batch-gateway: one OpenAI-compatible batch endpoint in front of many LLM providers."""

__version__ = "0.1.0"
