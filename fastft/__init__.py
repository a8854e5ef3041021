"""fastft: QLoRA fine-tuning with Unsloth, from a JSONL of conversations to an ollama-ready folder."""

__version__ = "0.1.0"
