"""Readers and writers of cluster, layout and plan files."""
