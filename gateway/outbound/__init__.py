"""Mail out: rendering, the outbox and its transports."""
