"""Live data over WebSocket: subscribers of the event bus, one per connected client."""
