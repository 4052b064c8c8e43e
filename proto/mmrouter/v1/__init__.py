"""mmrouter.v1: generated from router.proto; regenerate, never edit."""
