"""gemma-operator: serve Gemma models with vLLM on Kubernetes."""

__version__ = "0.1.0"
