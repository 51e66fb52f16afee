"""Kokoro TTS served from Ray Serve."""
