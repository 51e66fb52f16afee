"""Getting weights onto disk: downloading and verifying releases, and the preflight of `make serve`."""
