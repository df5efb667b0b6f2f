"""The node-local runner: resource detection, packing, launching and reaping jobs."""
