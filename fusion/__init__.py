"""Fusion heads that combine encoder outputs, and the contrastive dual-encoder head."""
