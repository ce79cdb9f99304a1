"""The EVR queue: incidents from the call handler's entry to the sergeant's review."""
