"""Byte streams over endpoints: the socket facade (and, on it, asyncio streams)."""
