"""The benchmark: `make bench` (see docs/performance.md). Nothing here is deployed or imported by the app."""
