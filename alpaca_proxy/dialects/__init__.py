"""Pure translation between wire messages and the proxy's requests and events."""
