"""Data models and the error tree; imports nothing else of nvllm."""
