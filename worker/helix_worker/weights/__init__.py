"""Fetching one node's part of a checkpoint from Hugging Face or S3 (what a worker pod's init container runs)."""
