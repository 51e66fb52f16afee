"""The front door: HTTP and WebSocket routes, request validation, error mapping, access, audio encoding and
streaming. Runs in the ingress replicas and the proxy; imports the shared core and `text`, never `model`, and
no torch, kokoro, misaki or spaCy."""
