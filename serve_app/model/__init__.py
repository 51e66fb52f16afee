"""What runs inside a model replica: the replica and its model thread, the engine and the per-version
wrappers around kokoro's KModel, batched synthesis, weight loading, dummy weights, voices and the v0.19
front end. The only package that imports torch, kokoro and misaki."""
