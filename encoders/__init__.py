"""Pluggable text, image and audio encoders behind one factory."""
