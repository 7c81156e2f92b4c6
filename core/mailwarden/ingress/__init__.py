"""Ingress adapters: each turns a protocol's conversation into (Envelope, raw bytes)."""
