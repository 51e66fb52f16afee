"""The torch-free text front end the ingress runs: cutting text into pieces, normalising it, inline
pronunciations, voice specs, phoneme splits and word timings. Imports only the shared core."""
