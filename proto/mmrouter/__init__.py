"""Generated protobuf code for the mmrouter wire API (see router.proto)."""
