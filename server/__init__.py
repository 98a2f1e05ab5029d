"""Running nvllm: the embedded store (store.py) and the HTTP server (http.py)."""
