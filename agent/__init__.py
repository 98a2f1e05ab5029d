"""The nvllm agent: runs beside a vLLM server, registers it with nvllm and keeps its load fresh."""
