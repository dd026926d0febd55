//! The VMM's HTTP API (Firecracker-compatible models, routing, OpenAPI): arrives with issue 4.
