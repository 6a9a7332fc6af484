"""pcpretrain: pre-train Llama-style models with polynomially preconditioned weights."""

__version__ = "0.1.0"
