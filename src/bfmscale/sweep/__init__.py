"""Sweeps: designs per axis, the content-addressed run store, executors (local, Ray), collect."""
